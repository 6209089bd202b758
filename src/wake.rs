//! Futures and sources that are polled only once they asked to be.
//!
//! A session task waits on several things at once, and whatever wakes it (nearly always a
//! socket), `select!` and `join!` poll every one of them again. A `CancellationToken`'s future,
//! which every session holds for shutdown and reloads, takes two mutexes per poll: on a relay or
//! an echo that is a cost on every frame. And a relay or a tunnel reads two sockets in one task:
//! woken by one, it polled a read of the other too, which took a lent buffer and tokio's
//! readiness check (a mutex of its own) only to come back `Pending`. Skipping that read took
//! callgrind's count per 20 B echo from 517–522 user instructions to 474–475 through
//! passthrough, and from 1,168–1,173 to 1,129–1,140 through the relay (100 connections, 8
//! messages in flight; with one message at a time, 5,841–5,863 to 5,487 and 8,775–8,797 to
//! 8,451, the epoll round included).
//!
//! A [`Gate`] hands what it polls a waker of its own, and after a `Pending` it lets the next poll
//! through only once that waker fired; in between, a poll is an atomic swap. [`Filtered`] is a
//! future behind one.
//!
//! This is sound for whatever keeps the `Future`/`AsyncRead` contract: a `Pending` means the
//! waker it was given is woken once a poll can make progress (tokio's coop budget included:
//! it wakes the waker when it refuses). All polls of a source must then go through its gate: a
//! poll made around it could hand the source another waker, which the gate would never see.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Lets polls of one source through only when they can have something new: the first one, any
/// after a `Ready`, one after the source's waker fired, and one when the task's waker changed.
#[derive(Default)]
pub struct Gate {
    /// Made at the first poll, for the task polling; made anew if another task ever polls. With
    /// it, the flag as a waker, made once rather than at every poll.
    flag: Option<(Arc<Flag>, Waker)>,
}

struct Flag {
    woken: AtomicBool,
    /// The last poll let through returned `Pending`. Only the gate's owner touches it; it sits
    /// here, in the allocation's padding, because a gate is part of every session's state.
    waiting: AtomicBool,
    /// Fixed for the flag's life, so a wake-up takes no lock.
    task: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Gate {
    #[cold]
    fn new_flag(&mut self, task: &Waker) -> &(Arc<Flag>, Waker) {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            task: task.clone(),
        });
        let waker = Waker::from(flag.clone());
        self.flag.insert((flag, waker))
    }

    /// Lets the next poll through, whatever woke the task: what it polls has changed.
    pub fn open(&mut self) {
        if let Some((flag, _)) = &self.flag {
            flag.waiting.store(false, Ordering::Relaxed);
        }
    }
}

/// How the polls of a source are let through: by a [`Gate`], or all of them ([`Direct`]).
pub trait Admit: Default {
    /// Calls `poll`, or returns `Pending` without calling it if it cannot have anything new.
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T>;
}

impl Admit for Gate {
    /// Calls `poll` with the gate's waker, or returns `Pending` without calling it if the last
    /// call returned `Pending` and nothing woke the gate since.
    #[inline]
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let (flag, waker) = match &self.flag {
            Some(made @ (flag, _)) if flag.task.will_wake(cx.waker()) => {
                // Cleared before `poll` runs, so a wake-up during it is not lost.
                let woken = flag.woken.swap(false, Ordering::AcqRel);
                if !woken && flag.waiting.load(Ordering::Relaxed) {
                    return Poll::Pending;
                }
                made
            }
            // A source woken through an earlier flag is polled now, with the new one's waker.
            _ => self.new_flag(cx.waker()),
        };
        let out = poll(&mut Context::from_waker(waker));
        flag.waiting.store(out.is_pending(), Ordering::Relaxed);
        out
    }
}

/// Every poll goes through, with the task's waker: for a source alone in its task (an echo's
/// socket), which is polled because it woke the task, and would only pay for a gate. An echo
/// behind one measured 742–743 user instructions per 20 B echo before and 748–749 after
/// (callgrind), and 2,688 bytes of heap per idle session before and 2,848 after.
#[derive(Default)]
pub struct Direct;

impl Admit for Direct {
    #[inline(always)]
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        poll(cx)
    }
}

/// A future polled through a [`Gate`]. `F` is typically a pinned reference (`pin!(fut)`), so no
/// unsafe pin projection is needed.
pub struct Filtered<F> {
    inner: F,
    gate: Gate,
}

impl<F> Filtered<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            gate: Gate::default(),
        }
    }

    /// The wrapped future, to change it (reset a timer, put a new future in its place): the
    /// next poll goes through to it, whatever woke the task.
    pub fn rearm(&mut self) -> &mut F {
        self.gate.open();
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Filtered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        this.gate.poll(cx, |cx| Pin::new(inner).poll(cx))
    }
}

/// A waker that counts how often it was woken, for tests of who wakes a task.
#[cfg(test)]
pub(crate) mod counting {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    pub(crate) struct Count(AtomicU32);

    impl Count {
        pub(crate) fn get(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicU32::new(0)));
        (count.clone(), Waker::from(count))
    }
}

#[cfg(test)]
mod tests {
    use super::counting::counter;
    use super::*;
    use std::cell::Cell;
    use std::sync::Mutex;

    /// Counts its polls; ready once `open` is set; keeps the waker it was given.
    #[derive(Default)]
    struct Probe {
        polls: Cell<u32>,
        open: Cell<bool>,
        waker: Mutex<Option<Waker>>,
    }

    impl Future for &Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.open.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Probe {
        fn wake(&self) {
            self.waker.lock().unwrap().take().unwrap().wake();
        }
    }

    #[test]
    fn inner_is_polled_only_when_it_woke() {
        let probe = Probe::default();
        let mut f = Filtered::new(&probe);
        let (count, task) = counter();
        let mut cx = Context::from_waker(&task);
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(probe.polls.get(), 1, "the first poll goes through");
        for _ in 0..5 {
            assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        }
        assert_eq!(
            probe.polls.get(),
            1,
            "the task woke for something else: not polled"
        );
        probe.open.set(true);
        probe.wake();
        assert_eq!(count.get(), 1, "its wake-up wakes the task");
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
        assert_eq!(probe.polls.get(), 2);
    }

    #[test]
    fn a_rearmed_future_is_polled_again() {
        let (probe, other) = (Probe::default(), Probe::default());
        let mut f = Filtered::new(&probe);
        let (_, task) = counter();
        let mut cx = Context::from_waker(&task);
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        *f.rearm() = &other;
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(other.polls.get(), 1, "the new future's first poll");
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(other.polls.get(), 1, "and then only when it woke");
        assert_eq!(probe.polls.get(), 1);
    }

    #[test]
    fn a_new_task_waker_gets_a_poll_and_the_wake_ups() {
        let probe = Probe::default();
        let mut f = Filtered::new(&probe);
        let (_, first) = counter();
        assert!(Pin::new(&mut f)
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        let (second_count, second) = counter();
        assert!(Pin::new(&mut f)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(
            probe.polls.get(),
            2,
            "a different task waker: polled to re-register"
        );
        probe.wake();
        assert_eq!(second_count.get(), 1, "the new one is woken");
    }

    /// A source that answers each poll with what it was told, keeps the waker it was given,
    /// and can wake it from inside the poll (as tokio does when the task's budget is spent).
    #[derive(Default)]
    struct Source {
        polls: u32,
        waker: Option<Waker>,
    }

    impl Source {
        fn poll(&mut self, cx: &mut Context<'_>, out: Poll<u8>, wake_now: bool) -> Poll<u8> {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
            if wake_now {
                cx.waker().wake_by_ref();
            }
            out
        }
    }

    #[test]
    fn a_gate_skips_a_waiting_source_until_it_wakes() {
        let mut gate = Gate::default();
        let mut src = Source::default();
        let (count, task) = counter();
        let mut cx = Context::from_waker(&task);
        // One poll of the gate; `Ready(n)` or `Pending` is what the source answers if polled.
        let mut poll = |src: &mut Source, out: Poll<u8>, wake_now: bool| {
            gate.poll(&mut cx, |cx| src.poll(cx, out, wake_now))
        };

        // Ready: the next poll goes through, as a source may have more (a TLS stream's
        // decrypted bytes) without its waker ever firing.
        assert_eq!(poll(&mut src, Poll::Ready(1), false), Poll::Ready(1));
        assert_eq!(poll(&mut src, Poll::Pending, false), Poll::Pending);
        assert_eq!(src.polls, 2);
        for _ in 0..5 {
            assert_eq!(poll(&mut src, Poll::Ready(9), false), Poll::Pending);
        }
        assert_eq!(src.polls, 2, "waiting and not woken: not polled");

        src.waker.take().unwrap().wake();
        assert_eq!(count.get(), 1, "the source's wake-up wakes the task");
        assert_eq!(poll(&mut src, Poll::Ready(2), false), Poll::Ready(2));
        assert_eq!(src.polls, 3);

        // A wake-up from inside the poll that returned Pending is not lost.
        assert_eq!(poll(&mut src, Poll::Pending, true), Poll::Pending);
        assert_eq!(poll(&mut src, Poll::Ready(3), false), Poll::Ready(3));
        assert_eq!(src.polls, 5);

        // Opened, it lets the next poll through unwoken.
        assert_eq!(poll(&mut src, Poll::Pending, false), Poll::Pending);
        gate.open();
        assert!(gate
            .poll(&mut cx, |cx| src.poll(cx, Poll::Pending, false))
            .is_pending());
        assert_eq!(src.polls, 7);
    }

    #[test]
    fn a_gate_polled_by_another_task_hands_the_source_that_tasks_wake_ups() {
        let mut gate = Gate::default();
        let mut src = Source::default();
        let (first_count, first) = counter();
        let pending = |src: &mut Source, cx: &mut Context<'_>| src.poll(cx, Poll::Pending, false);
        assert!(gate
            .poll(&mut Context::from_waker(&first), |cx| pending(&mut src, cx))
            .is_pending());
        let (second_count, second) = counter();
        assert!(gate
            .poll(&mut Context::from_waker(&second), |cx| pending(
                &mut src, cx
            ))
            .is_pending());
        assert_eq!(
            src.polls, 2,
            "a different task waker: polled to re-register"
        );
        src.waker.take().unwrap().wake();
        assert_eq!((first_count.get(), second_count.get()), (0, 1));
        assert!(gate
            .poll(&mut Context::from_waker(&second), |cx| pending(
                &mut src, cx
            ))
            .is_pending());
        assert_eq!(src.polls, 3);
    }
}
