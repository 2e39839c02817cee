//! Where background work runs: nice values and CPU affinity for the projector's threads and for the
//! PostgreSQL server processes that write for it, so that commands and searches find a CPU at once.
//!
//! Why affinity and not only priority: on the 2-vCPU development VM, a process woken by another CPU is
//! often queued on the CPU where it last ran; when that CPU is busy, it waits there for the busy CPU's
//! next scheduler tick (up to 4 ms at HZ=250), even while the other CPU is idle, and whatever the busy
//! thread's nice value or policy (seen behind a SCHED_IDLE model thread in `perf sched`). Keeping the
//! background off one CPU leaves requests a CPU on which nothing of the projector ever runs.
//! Everything here is best effort: a failure leaves the default placement and is logged at debug.

/// A set of CPU numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    /// The CPUs this process may run on, but the first: where background work goes while requests
    /// arrive. `None` with fewer than two CPUs (nothing to leave free) or where affinity is unsupported.
    pub fn background() -> Option<CpuSet> {
        let allowed = allowed_cpus()?;
        Self::all_but_first(&allowed)
    }

    fn all_but_first(allowed: &[usize]) -> Option<CpuSet> {
        (allowed.len() >= 2).then(|| CpuSet(allowed[1..].to_vec()))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

/// How readily a thread takes a CPU that others want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Normal,
    /// Linux's SCHED_IDLE: the thread runs only when no other thread wants the CPU, and a waking one
    /// takes it at once. For model threads, which hold nothing a request could wait on (a database
    /// process holds locks, so it gets a nice value instead). Measured with a one-thread model run
    /// pinned beside a two-thread query of 24 word pieces (`recall-bench embed --query-pause-ms 20`),
    /// query p50: 6.6-7.1 ms alone, 10.8-11.8 beside it at nice 10, 8.4-9.0 beside it at SCHED_IDLE.
    Idle,
    /// Real-time round robin at the lowest real-time priority, where permitted (root, CAP_SYS_NICE or an
    /// RLIMIT_RTPRIO), else left normal (logged once). For the query pool: rayon's idle workers call
    /// `sched_yield` a few dozen times before sleeping, and a normal thread's yield hands its CPU to a
    /// runnable projector thread, even a SCHED_IDLE one, which then keeps it until the next scheduler
    /// tick (4 ms at HZ=250) while the query waits for that worker; a real-time thread yields only to
    /// real-time threads. Its cost: a burst of searches takes the CPUs ahead of everything at normal
    /// priority (commands included) for as long as their embeddings take, and the kernel keeps 5% of
    /// each second for the rest whatever happens (`sched_rt_runtime_us`). Measured beside a SCHED_IDLE
    /// model run as for `Idle`, the two-thread query p50: 9.1-10.8 ms normal, 6.0-6.8 real-time (5.6 alone).
    Realtime,
}

/// The projector's model threads beside the API.
pub const BACKGROUND_MODEL: Priority = Priority::Idle;
/// The projector's database server processes beside the API.
pub const BACKGROUND_DATABASE_NICENESS: i32 = 10;

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
        // SAFETY: param is a valid sched_param that the call only reads; on Linux a thread id applies
        // to that thread only.
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
        // SAFETY: setpriority has no memory-safety preconditions; on Linux PRIO_PROCESS with a thread id
        // applies to that thread only.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, id as libc::id_t, niceness) } == 0;
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
    // SAFETY: gettid has no preconditions.
    return unsafe { libc::gettid() };
    #[cfg(not(target_os = "linux"))]
    return 0;
}

/// Restricts a thread or single-threaded process to `cpus`. Returns whether it took effect.
pub(crate) fn pin(id: i32, cpus: &CpuSet) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data, valid zeroed; CPU_SET only writes inside it (numbers beyond
        // its capacity are skipped below); sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes.
        let done = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
            for &cpu in cpus.cpus().iter().filter(|&&c| c < capacity) {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(id, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
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

fn allowed_cpus() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as in `pin`; CPU_ISSET only reads inside the set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
            Some((0..capacity).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
        }
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
        // SAFETY: as above.
        assert_eq!(
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
