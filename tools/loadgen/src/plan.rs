//! Who is who in a run: the users and their connections (one per device), how users group
//! into pairs or rooms, who sends where, and which worker process holds which connections.
//! Pure, so both the coordinator and every worker derive the same layout from the same few
//! numbers.

use serde::{Deserialize, Serialize};

/// One process holds at most this many sockets (the open-files limit here is 20,000).
pub const MAX_SOCKETS_PER_WORKER: usize = 15_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Logged-in connections that only hold.
    Idle,
    /// Pairs of users, each sending to the other.
    OneToOne,
    /// Pairs as in one-to-one, every user on two devices (two connections, each logged in
    /// with its own device id); a user sends from its first device, and each message must
    /// reach both devices of the recipient. Samvad only: the peers have no notion of devices.
    MultiDevice,
    /// Rooms (groups) whose members all post to the room.
    Fanout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Samvad's client protocol: v2.1 text frames, server acks, client acks.
    Samvad,
    /// Samvad's MQTT door, MQTT 3.1.1 over WebSocket at `/mqtt`: QoS 1 both ways, the PUBACK
    /// as the server ack and as the client ack.
    SamvadMqtt,
    /// Samvad's gRPC door, a `Connect` call per device (`--grpc-addr`): v3 messages both ways,
    /// server acks, client acks.
    SamvadGrpc,
    /// The Bun pub/sub server in deployment/bench/bun.
    Bun,
    /// nats-server's WebSocket listener, NATS text protocol.
    Nats,
}

impl Target {
    /// Samvad, by whichever door: its users log in, and its acks are counted.
    pub fn is_samvad(self) -> bool {
        matches!(self, Self::Samvad | Self::SamvadMqtt | Self::SamvadGrpc)
    }
}

/// Devices per user in the multi-device scenario.
pub const DEVICES: usize = 2;

/// Where one sender's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    User(usize),
    Room(usize),
}

/// The shape of a run, shared by the coordinator and the workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub scenario: Scenario,
    /// Users in all (one connection per device each).
    pub users: usize,
    /// Members per room (2 for pairs).
    pub room_size: usize,
    /// Worker processes.
    pub workers: usize,
    /// Prefix of every user and room name, unique per run.
    pub prefix: String,
}

impl Layout {
    pub fn new(scenario: Scenario, count: usize, room_size: usize, workers: Option<usize>) -> Self {
        let (users, room_size) = match scenario {
            Scenario::Idle => (count, 1),
            Scenario::OneToOne | Scenario::MultiDevice => (count * 2, 2),
            Scenario::Fanout => (count * room_size, room_size),
        };
        let mut layout = Self {
            scenario,
            users,
            room_size,
            workers: 1,
            prefix: String::new(),
        };
        let connections = layout.connections();
        layout.workers = workers
            .unwrap_or_else(|| connections.div_ceil(MAX_SOCKETS_PER_WORKER))
            .clamp(1, connections.max(1));
        layout
    }

    /// Connections (devices) per user.
    pub fn devices(&self) -> usize {
        match self.scenario {
            Scenario::MultiDevice => DEVICES,
            _ => 1,
        }
    }

    /// Connections in all: user `u`'s devices are connections `u * devices()..`, in order.
    pub fn connections(&self) -> usize {
        self.users * self.devices()
    }

    /// The user connection `c` belongs to.
    pub fn user_of(&self, c: usize) -> usize {
        c / self.devices()
    }

    /// The device id connection `c` logs in with: `None` (the server's default device) when
    /// users have one device.
    pub fn device_id(&self, c: usize) -> Option<String> {
        (self.devices() > 1).then(|| format!("d{}", c % self.devices()))
    }

    pub fn rooms(&self) -> usize {
        match self.scenario {
            Scenario::Fanout => self.users / self.room_size,
            _ => 0,
        }
    }

    /// The connections worker `w` holds: contiguous, as even as can be.
    pub fn worker_connections(&self, w: usize) -> std::ops::Range<usize> {
        let n = self.connections();
        (w * n / self.workers)..((w + 1) * n / self.workers)
    }

    pub fn user_name(&self, u: usize) -> String {
        format!("{}u{u}", self.prefix)
    }

    pub fn room_name(&self, r: usize) -> String {
        format!("{}r{r}", self.prefix)
    }

    pub fn room_of(&self, u: usize) -> usize {
        u / self.room_size
    }

    pub fn room_members(&self, r: usize) -> std::ops::Range<usize> {
        (r * self.room_size)..((r + 1) * self.room_size)
    }

    /// Where connection `c` sends, if it sends at all: a user sends from its first device.
    pub fn dest(&self, c: usize) -> Option<Dest> {
        if !c.is_multiple_of(self.devices()) {
            return None;
        }
        let u = self.user_of(c);
        match self.scenario {
            Scenario::Idle => None,
            Scenario::OneToOne | Scenario::MultiDevice => Some(Dest::User(u ^ 1)),
            Scenario::Fanout => Some(Dest::Room(self.room_of(u))),
        }
    }

    /// Deliveries one message causes: every device of every member of the room but the
    /// sender.
    pub fn fanout(&self) -> u64 {
        let recipients = match self.scenario {
            Scenario::Idle => 0,
            Scenario::OneToOne | Scenario::MultiDevice => 1,
            Scenario::Fanout => self.room_size as u64 - 1,
        };
        recipients * self.devices() as u64
    }

    /// Worker `w`'s share of an offered rate: every sending connection sends at the same rate.
    pub fn worker_rate(&self, rate: f64, w: usize) -> f64 {
        let senders = |cs: std::ops::Range<usize>| cs.filter(|&c| self.dest(c).is_some()).count();
        match senders(0..self.connections()) {
            0 => 0.0,
            all => rate * senders(self.worker_connections(w)) as f64 / all as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_split_users_evenly_and_completely() {
        let l = Layout::new(Scenario::Idle, 20_000, 1, None);
        assert_eq!(l.workers, 2);
        assert_eq!(l.worker_connections(0), 0..10_000);
        assert_eq!(l.worker_connections(1), 10_000..20_000);
        let l = Layout::new(Scenario::OneToOne, 7, 2, Some(3));
        let all: Vec<usize> = (0..3).flat_map(|w| l.worker_connections(w)).collect();
        assert_eq!(all, (0..14).collect::<Vec<_>>());
        let share: f64 = (0..3).map(|w| l.worker_rate(1000.0, w)).sum();
        assert!((share - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn pairs_send_to_each_other_and_rooms_to_their_room() {
        let l = Layout::new(Scenario::OneToOne, 2, 2, None);
        assert_eq!(l.dest(0), Some(Dest::User(1)));
        assert_eq!(l.dest(3), Some(Dest::User(2)));
        assert_eq!(l.fanout(), 1);
        let l = Layout::new(Scenario::Fanout, 3, 10, None);
        assert_eq!(l.users, 30);
        assert_eq!(l.rooms(), 3);
        assert_eq!(l.dest(25), Some(Dest::Room(2)));
        assert_eq!(l.room_members(2), 20..30);
        assert_eq!(l.fanout(), 9);
    }

    #[test]
    fn with_two_devices_a_user_sends_from_one_and_is_delivered_to_both() {
        let l = Layout::new(Scenario::MultiDevice, 2, 2, Some(3));
        assert_eq!((l.users, l.connections()), (4, 8));
        assert_eq!(l.user_of(5), 2);
        assert_eq!(l.device_id(4).as_deref(), Some("d0"));
        assert_eq!(l.device_id(5).as_deref(), Some("d1"));
        assert_eq!(l.dest(4), Some(Dest::User(3)));
        assert_eq!(l.dest(5), None);
        assert_eq!(l.fanout(), 2);
        // Workers hold 2, 3 and 3 connections, of which 1, 2 and 1 send.
        let shares: Vec<f64> = (0..3).map(|w| l.worker_rate(400.0, w)).collect();
        assert_eq!(shares, vec![100.0, 200.0, 100.0]);
        assert_eq!(
            Layout::new(Scenario::OneToOne, 2, 2, None).device_id(1),
            None
        );
    }
}
