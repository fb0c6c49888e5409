//! All-zero detection: a backup records all-zero chunks as holes, a restore
//! leaves all-zero blocks unwritten (sparse) and checks holes read back as zeros.

/// Whether every byte is zero. Checks 4 KiB blocks word-wise and stops at
/// the first block with data, so non-zero chunks cost little.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096).all(|block| {
        let mut words = block.chunks_exact(16);
        let mut acc = 0u128;
        for w in &mut words {
            acc |= u128::from_ne_bytes(w.try_into().expect("16 bytes"));
        }
        acc == 0 && words.remainder().iter().all(|&b| b == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 10_000]));
        let mut v = vec![0u8; 10_000];
        v[9_999] = 1;
        assert!(!is_zero(&v));
        v[9_999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
