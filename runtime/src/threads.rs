//! The async runtime a process runs on, sized by its config.

use tokio::runtime::{Builder, Runtime};

/// Builds the async runtime with `threads` threads: 1 runs every task on
/// the thread that calls `block_on` (the main thread), 0 is one thread per
/// core (tokio's default), and N is N threads of a multi-threaded
/// scheduler.
pub fn runtime(threads: usize) -> std::io::Result<Runtime> {
    let mut builder = match threads {
        1 => Builder::new_current_thread(),
        threads => {
            let mut builder = Builder::new_multi_thread();
            if threads > 1 {
                builder.worker_threads(threads);
            }
            builder
        }
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::*;

    #[test]
    fn the_runtime_has_the_threads_asked_for() {
        let one = runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // Timers and sockets work on it.
        one.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(1)).await });
        let three = runtime(3).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
        let per_core = runtime(0).unwrap();
        assert_eq!(
            per_core.metrics().num_workers(),
            std::thread::available_parallelism().unwrap().get()
        );
    }
}
