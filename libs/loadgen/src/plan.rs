//! Who is who in a run: the users, how they group into pairs or rooms, who sends where, and
//! which worker process holds which users. Pure, so both the coordinator and every worker
//! derive the same layout from the same few numbers.

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
    /// Rooms (groups) whose members all post to the room.
    Fanout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Samvad's client protocol: v2.1 text frames, server acks, client acks.
    Samvad,
    /// The Bun pub/sub server in deployment/bench/bun.
    Bun,
    /// nats-server's WebSocket listener, NATS text protocol.
    Nats,
}

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
    /// Users in all: one connection each.
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
            Scenario::OneToOne => (count * 2, 2),
            Scenario::Fanout => (count * room_size, room_size),
        };
        let workers = workers
            .unwrap_or_else(|| users.div_ceil(MAX_SOCKETS_PER_WORKER))
            .clamp(1, users.max(1));
        Self {
            scenario,
            users,
            room_size,
            workers,
            prefix: String::new(),
        }
    }

    pub fn rooms(&self) -> usize {
        match self.scenario {
            Scenario::Fanout => self.users / self.room_size,
            _ => 0,
        }
    }

    /// The users worker `w` holds: contiguous, as even as can be.
    pub fn worker_users(&self, w: usize) -> std::ops::Range<usize> {
        (w * self.users / self.workers)..((w + 1) * self.users / self.workers)
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

    /// Where user `u` sends, if it sends at all.
    pub fn dest(&self, u: usize) -> Option<Dest> {
        match self.scenario {
            Scenario::Idle => None,
            Scenario::OneToOne => Some(Dest::User(u ^ 1)),
            Scenario::Fanout => Some(Dest::Room(self.room_of(u))),
        }
    }

    /// Deliveries one message causes: every member of the room but the sender.
    pub fn fanout(&self) -> u64 {
        match self.scenario {
            Scenario::Idle => 0,
            Scenario::OneToOne => 1,
            Scenario::Fanout => self.room_size as u64 - 1,
        }
    }

    /// Worker `w`'s share of an offered rate: every user sends at the same rate.
    pub fn worker_rate(&self, rate: f64, w: usize) -> f64 {
        rate * self.worker_users(w).len() as f64 / self.users as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_split_users_evenly_and_completely() {
        let l = Layout::new(Scenario::Idle, 20_000, 1, None);
        assert_eq!(l.workers, 2);
        assert_eq!(l.worker_users(0), 0..10_000);
        assert_eq!(l.worker_users(1), 10_000..20_000);
        let l = Layout::new(Scenario::OneToOne, 7, 2, Some(3));
        let all: Vec<usize> = (0..3).flat_map(|w| l.worker_users(w)).collect();
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
}
