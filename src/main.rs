fn main() {
    keep_freed_memory();
    one_candle_thread();
    std::process::exit(forge::cli::main());
}

/// Training on a CPU allocates and frees buffers of tens of megabytes many times a second (logits
/// over a 151,936-token vocabulary). glibc's defaults give each back to the kernel — by `munmap`,
/// by trimming, or by releasing the 64 MiB heaps of the arena of the thread a stage runs on — so
/// every use faulted its pages in again: a third of the CPU time of the default pipeline's `sft`
/// went to page faults. One arena and high thresholds keep freed memory in the process for reuse
/// (the resident set stays near its peak, which a batch tool can afford).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, GIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, GIB);
        }
    }
}

/// forge spreads CPU training over the cores itself, one micro-batch per rayon thread, and rayon
/// splits candle's matrix products further where that pays. candle's own pool of element-wise
/// workers would run beside those threads and spin between its ops, taking the cores they need.
/// With one thread it runs each op where it is called. `CANDLE_NUM_THREADS` set by the user wins.
fn one_candle_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
