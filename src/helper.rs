//! A helper thread that starts at once.
//!
//! Linux may queue a new thread on the CPU of the thread that made it, behind
//! that thread, until the latter sleeps, even when another CPU is idle. On the
//! 2-vCPU machine the benchmarks run on, a helper started while the installer
//! decrypts began anywhere from 0.1 ms to 3 ms late, which is as long as the
//! whole decryption it was to share (a probe in C: a thread made while its
//! maker spins starts after 60 µs–3 ms; with the maker's CPU left out of its
//! mask, after 75–130 µs, every time). So the helper's CPU mask leaves out
//! the CPU its maker is on at that moment, when another CPU is allowed; it is
//! a mask, so the helper may run on any other allowed CPU. Once running, the
//! helper takes back its maker's mask: kept off for good, it shared a CPU
//! with its maker whenever the maker moved there while the other CPU idled
//! (on the benchmark host, about one run in four lost 1–2 ms that way).
//! Nothing depends on this for correctness: where a mask cannot be set, the
//! helper runs late or stays where it was put.

use std::thread::JoinHandle;

/// Starts `f` on a thread named `name`, kept off the caller's current CPU
/// (Linux, with another CPU allowed).
pub(crate) fn spawn<T, F>(name: &str, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(target_os = "linux")]
    {
        use nix::sched::{sched_getaffinity, sched_setaffinity};
        use nix::unistd::Pid;
        let everywhere = sched_getaffinity(Pid::from_raw(0)).ok();
        // The helper takes back the maker's mask only once the maker has
        // kept it off (else the maker could pin it for good after).
        let (placed, wait) = std::sync::mpsc::sync_channel::<()>(1);
        let handle = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let _ = wait.recv();
            if let Some(set) = everywhere {
                let _ = sched_setaffinity(Pid::from_raw(0), &set);
            }
            f()
        })?;
        keep_off_this_cpu(&handle);
        let _ = placed.send(());
        Ok(handle)
    }
    #[cfg(not(target_os = "linux"))]
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

/// The calling thread's allowed CPUs without the one it is on; `None` when
/// that leaves none (one CPU) or either is unknown.
#[cfg(target_os = "linux")]
fn other_cpus() -> Option<nix::sched::CpuSet> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu};
    let mut set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    set.unset(sched_getcpu().ok()?).ok()?;
    (0..CpuSet::count())
        .any(|cpu| set.is_set(cpu).unwrap_or(false))
        .then_some(set)
}

/// How many CPUs besides the one the caller is on it may use (0 when
/// unknown).
#[cfg(target_os = "linux")]
pub(crate) fn other_cpu_count() -> usize {
    other_cpus().map_or(0, |set| {
        (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .count()
    })
}

#[cfg(target_os = "linux")]
fn keep_off_this_cpu<T>(handle: &JoinHandle<T>) {
    use std::os::unix::thread::JoinHandleExt;
    let Some(set) = other_cpus() else {
        return;
    };
    // SAFETY: the pthread_t comes from a JoinHandle we hold, so the thread is
    // neither joined nor detached and its pthread_t is valid; `CpuSet` is a
    // `repr(transparent)` wrapper of `cpu_set_t`, passed with its own size.
    // A failure (e.g. a cpuset cgroup refusing the mask) only leaves the
    // thread where the scheduler put it.
    unsafe {
        nix::libc::pthread_setaffinity_np(
            handle.as_pthread_t(),
            std::mem::size_of::<nix::sched::CpuSet>(),
            (&set as *const nix::sched::CpuSet).cast::<nix::libc::cpu_set_t>(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_runs_and_hands_back_its_result() {
        let h = spawn("helper-test", || 6 * 7).expect("a thread");
        assert_eq!(h.join().expect("no panic"), 42);
    }

    #[cfg(target_os = "linux")]
    fn count(s: &nix::sched::CpuSet) -> usize {
        (0..nix::sched::CpuSet::count())
            .filter(|&c| s.is_set(c).unwrap_or(false))
            .count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_helper_is_kept_off_its_makers_cpu_when_another_is_allowed() {
        use nix::sched::sched_getaffinity;
        use nix::unistd::Pid;
        let mine = sched_getaffinity(Pid::from_raw(0)).expect("own mask");
        let allowed = count(&mine);
        if other_cpus().is_none() {
            assert!(allowed <= 1, "with {allowed} CPUs allowed there is another one");
            assert_eq!(other_cpu_count(), 0);
            return;
        }
        assert_eq!(other_cpu_count(), allowed - 1);
        // A thread reads its own mask once the maker has kept it off.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            wait.recv().expect("the maker says go");
            sched_getaffinity(Pid::from_raw(0)).expect("its mask")
        });
        keep_off_this_cpu(&h);
        go.send(()).expect("the thread waits");
        let got = h.join().expect("no panic");
        // The maker may have moved CPU between the two readings; either way
        // the thread's mask is the maker's without one CPU.
        assert_eq!(count(&got), allowed - 1, "{got:?} against {mine:?}");
        assert!((0..nix::sched::CpuSet::count()).all(|c| !got.is_set(c).unwrap() || mine.is_set(c).unwrap()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_helper_at_work_may_run_wherever_its_maker_may() {
        use nix::sched::sched_getaffinity;
        use nix::unistd::Pid;
        let mine = sched_getaffinity(Pid::from_raw(0)).expect("own mask");
        for _ in 0..20 {
            let h = spawn("helper-test", || {
                sched_getaffinity(Pid::from_raw(0)).expect("helper's mask")
            })
            .expect("a thread");
            assert_eq!(h.join().expect("no panic"), mine);
        }
    }
}
