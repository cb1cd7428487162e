//! What tells a connection to end. Each connection has one [`Signal`]: a word of reasons and the
//! waker of the connection's task, so that its loop looks at one atomic at every turn rather
//! than take a lock for each reason there is to end.

use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A reason for a connection to end (or, for `Closing`, to begin to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    /// The process drains: close within the spread.
    Closing = 1,
    /// The process stops: close now.
    Stop = 2,
    /// The connection fell behind: its queue overflowed.
    Slow = 4,
    /// Its device was unlinked (logged out).
    Unlinked = 8,
}

/// Reasons raised, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reasons(u8);

impl Reasons {
    pub(crate) fn has(self, reason: Reason) -> bool {
        self.0 & reason as u8 != 0
    }
}

/// Reasons raised for one connection, and the task to wake for them.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises `reason` and wakes the connection.
    pub(crate) fn raise(&self, reason: Reason) {
        self.raised.fetch_or(reason as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready with every reason raised once one not in `seen` is.
    pub(crate) fn poll_raised(&self, seen: Reasons, cx: &mut Context<'_>) -> Poll<Reasons> {
        let fresh = || {
            let raised = Reasons(self.raised.load(Ordering::Acquire));
            (raised.0 & !seen.0 != 0).then_some(raised)
        };
        if let Some(raised) = fresh() {
            return Poll::Ready(raised);
        }
        self.waker.register(cx.waker());
        // Raised between the first look and the registration: its wake found no waker.
        fresh().map_or(Poll::Pending, Poll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(signal: &Signal, seen: Reasons) -> Poll<Reasons> {
        signal.poll_raised(seen, &mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_reason_is_seen_once_raised_and_a_seen_one_waits_for_another() {
        let signal = Signal::default();
        assert_eq!(poll(&signal, Reasons::default()), Poll::Pending);
        signal.raise(Reason::Closing);
        let Poll::Ready(raised) = poll(&signal, Reasons::default()) else {
            panic!("closing not seen");
        };
        assert!(raised.has(Reason::Closing) && !raised.has(Reason::Stop));
        let seen = raised;
        assert_eq!(poll(&signal, seen), Poll::Pending);
        signal.raise(Reason::Unlinked);
        let Poll::Ready(raised) = poll(&signal, seen) else {
            panic!("unlinked not seen while draining");
        };
        assert!(raised.has(Reason::Unlinked) && raised.has(Reason::Closing));
    }
}
