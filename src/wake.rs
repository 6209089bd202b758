//! Futures that are polled only once they asked to be.
//!
//! A session task waits on several futures at once, and whatever wakes it (nearly always a
//! socket), `select!` polls every one of them again. A `CancellationToken`'s future, which
//! every session holds for shutdown and reloads, takes two mutexes per poll: on a relay or an
//! echo that is a cost on every frame. Wrapped in [`Filtered`], a future is polled again only
//! after its own waker fired; in between, polling it is an atomic swap.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Polls `inner` on its first poll, after its own waker fired, or when the task's waker
/// changed. `F` is typically a pinned reference (`pin!(fut)`), so no unsafe pin projection is
/// needed.
pub struct Filtered<F> {
    inner: F,
    flag: Arc<Flag>,
    /// The task's waker as last given to `flag`, to compare without taking its lock.
    task: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F> Filtered<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            flag: Arc::new(Flag {
                woken: AtomicBool::new(false),
                task: Mutex::new(None),
            }),
            task: None,
        }
    }
}

impl<F> Filtered<F> {
    /// The wrapped future, to change it (reset a timer, put a new future in its place): the
    /// next poll goes through to it, whatever woke the task.
    pub fn rearm(&mut self) -> &mut F {
        self.flag.woken.store(true, Ordering::Release);
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Filtered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        // Cleared before `inner` is polled, so a wake-up during that poll is not lost.
        let woken = this.flag.woken.swap(false, Ordering::AcqRel);
        if same_task && !woken {
            return Poll::Pending;
        }
        if !same_task {
            *this.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        }
        let waker = Waker::from(this.flag.clone());
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&waker))
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
}
