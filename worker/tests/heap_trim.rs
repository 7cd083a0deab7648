//! `heap_trim::trim` really hands freed memory back: the RSS of this process
//! (alone in its test binary, so no other test allocates meanwhile) drops
//! after a fragmented crowd of allocations is freed, which glibc's `free`
//! alone does not do.

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_socket_memory_goes_back_to_the_system() {
    // 100,000 blocks of a socket's sizes, one in 64 kept: the survivors are
    // scattered over the heap the way long-lived sockets are, so its top is
    // never free and glibc's own trimming finds nothing to return.
    let mut blocks: Vec<Option<Vec<u8>>> = (0..100_000)
        .map(|i| Some(vec![(i % 251) as u8; 700 + (i % 5) * 300]))
        .collect();
    let full = rss_bytes();
    for (i, block) in blocks.iter_mut().enumerate() {
        if i % 64 != 0 {
            *block = None;
        }
    }
    let freed = rss_bytes();
    assert!(
        sockhive_worker::heap_trim::trim(),
        "malloc_trim found nothing to return"
    );
    let trimmed = rss_bytes();
    eprintln!("RSS full {full}, after free {freed}, after trim {trimmed}");
    // About 110 MB were freed; free() kept nearly all of it, the trim most.
    assert!(freed > trimmed + 50_000_000, "{freed} -> {trimmed}");
    let kept: usize = blocks.iter().flatten().map(|b| b[0] as usize).sum();
    assert!(kept > 0);
}
