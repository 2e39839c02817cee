//! The system calls behind the CPU policy, through rustix where it has them; best effort: a failure
//! leaves the default placement and is logged at debug.

use super::{CpuSet, Priority};

/// Sets a thread's (or a single-threaded process's) priority. Returns whether it took effect.
pub(crate) fn set_priority(id: i32, priority: Priority) -> bool {
    match priority {
        Priority::Normal => true,
        Priority::Idle => scheduler_policy(id, Policy::Idle),
        Priority::Realtime => {
            let done = scheduler_policy(id, Policy::RoundRobin);
            if !done {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    tracing::info!(
                        "query threads run at normal priority: real-time scheduling is not permitted \
                         (root, CAP_SYS_NICE or an RLIMIT_RTPRIO of 1 allows it); searches may then wait \
                         for the projector's threads"
                    )
                });
            }
            done
        }
    }
}

enum Policy {
    Idle,
    RoundRobin,
}

fn scheduler_policy(id: i32, policy: Policy) -> bool {
    #[cfg(target_os = "linux")]
    {
        let (policy, priority) = match policy {
            // Moving to SCHED_IDLE needs no privilege.
            Policy::Idle => (libc::SCHED_IDLE, 0),
            Policy::RoundRobin => (libc::SCHED_RR, 1),
        };
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: param is a valid sched_param that the call only reads (rustix and nix have no
        // sched_setscheduler); on Linux a thread id applies to that thread only.
        let done = unsafe { libc::sched_setscheduler(id, policy, &param) } == 0;
        if !done {
            tracing::debug!(id, policy, "could not change a thread's scheduling policy");
        }
        done
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (id, policy);
        false
    }
}

/// Sets the nice value of a thread (a thread id) or of a single-threaded process (a process id); 0 is
/// left alone. Returns whether it took effect.
pub(crate) fn renice(id: i32, niceness: i32) -> bool {
    if niceness == 0 {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux, PRIO_PROCESS with a thread id applies to that thread only.
        let done = rustix::process::setpriority_process(rustix::process::Pid::from_raw(id), niceness).is_ok();
        if !done {
            tracing::debug!(id, niceness, "could not change a priority");
        }
        done
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = id;
        false
    }
}

/// The calling thread's id, for `renice` and `pin`.
pub(crate) fn current_thread() -> i32 {
    #[cfg(target_os = "linux")]
    return rustix::thread::gettid().as_raw_nonzero().get();
    #[cfg(not(target_os = "linux"))]
    return 0;
}

/// Restricts a thread or single-threaded process to `cpus`. Returns whether it took effect.
pub(crate) fn pin(id: i32, cpus: &CpuSet) -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut set = rustix::thread::CpuSet::new();
        for &cpu in cpus.cpus().iter().filter(|&&c| c < rustix::thread::CpuSet::MAX_CPU) {
            set.set(cpu);
        }
        let done = rustix::thread::sched_setaffinity(rustix::process::Pid::from_raw(id), &set).is_ok();
        if !done {
            tracing::debug!(id, cpus = ?cpus.cpus(), "could not restrict a thread to CPUs");
        }
        done
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (id, cpus);
        false
    }
}

pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        let set = rustix::thread::sched_getaffinity(None).ok()?;
        Some(
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&c| set.is_set(c))
                .collect(),
        )
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_leaves_the_first_allowed_cpu() {
        assert_eq!(CpuSet::all_but_first(&[0]), None, "one CPU: nothing to leave free");
        assert_eq!(CpuSet::all_but_first(&[2, 5, 7]), Some(CpuSet(vec![5, 7])));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_idle_priority_thread_runs_under_sched_idle_and_a_nice_one_at_its_nice_value() {
        let (idle, nice) = std::thread::spawn(|| {
            assert!(set_priority(current_thread(), Priority::Idle));
            // SAFETY: sched_getscheduler has no memory-safety preconditions.
            let idle = unsafe { libc::sched_getscheduler(0) };
            let nice = std::thread::spawn(|| {
                assert!(renice(current_thread(), 7));
                // SAFETY: as above; getpriority with a thread id reads that thread's nice value.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, current_thread() as libc::id_t) }
            })
            .join()
            .expect("thread ran");
            (idle, nice)
        })
        .join()
        .expect("thread ran");
        assert_eq!(idle, libc::SCHED_IDLE);
        assert_eq!(nice, 7);
        assert_eq!(
            // SAFETY: as above.
            unsafe { libc::sched_getscheduler(0) },
            libc::SCHED_OTHER,
            "the caller is left alone"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_realtime_thread_runs_round_robin_where_permitted_and_is_left_alone_where_not() {
        let (done, policy) = std::thread::spawn(|| {
            let done = set_priority(current_thread(), Priority::Realtime);
            // SAFETY: sched_getscheduler has no memory-safety preconditions.
            (done, unsafe { libc::sched_getscheduler(0) })
        })
        .join()
        .expect("thread ran");
        // Whether it is permitted depends on the machine (a container may withhold it even from root).
        let want = if done { libc::SCHED_RR } else { libc::SCHED_OTHER };
        assert_eq!(policy, want, "set_priority returned {done}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_runs_only_on_its_cpus() {
        let allowed = allowed_cpus().expect("affinity readable");
        let Some(background) = CpuSet::background() else {
            assert_eq!(allowed.len(), 1, "only a one-CPU machine has no background set");
            return;
        };
        let expected = background.clone();
        let pinned_to = std::thread::spawn(move || {
            assert!(pin(current_thread(), &background));
            allowed_cpus().expect("affinity readable")
        })
        .join()
        .expect("thread ran");
        assert_eq!(pinned_to, expected.cpus());
        // Pinning one thread leaves the rest of the process where it was.
        assert_eq!(allowed_cpus().expect("affinity readable"), allowed);
    }
}
