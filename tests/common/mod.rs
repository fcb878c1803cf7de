//! Helpers shared by the end-to-end tests: reading reference logits, comparing them.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

/// A C-order little-endian float32 `.npy` (format 1.0) matrix: (rows, cols, data).
pub fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}: not a format 1.0 .npy", path.display());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let dims: Vec<usize> = shape.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert_eq!(dims.len(), 2, "{header}");
    let data: Vec<f32> = bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(data.len(), dims[0] * dims[1]);
    (dims[0], dims[1], data)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// max|ours - ref| / max|ref| over `positions` (rows of `reference`; `ours` holds exactly
/// those rows, in order), and the positions whose arg-max differs.
pub fn compare(ours: &[f32], reference: &[f32], vocab: usize, positions: std::ops::Range<usize>) -> (f32, Vec<usize>) {
    assert_eq!(ours.len(), positions.len() * vocab);
    let ref_max = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let (mut err, mut disagree) = (0f32, Vec::new());
    for (row, t) in ours.chunks_exact(vocab).zip(positions) {
        let r = &reference[t * vocab..(t + 1) * vocab];
        err = row.iter().zip(r).fold(err, |m, (a, b)| m.max((a - b).abs()));
        if argmax(row) != argmax(r) {
            disagree.push(t);
        }
    }
    (err / ref_max, disagree)
}

/// Mean over positions of KL(softmax(reference) ‖ softmax(ours)), in f64.
pub fn mean_kl(ours: &[f32], reference: &[f32], vocab: usize) -> f64 {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row.iter().map(|&x| x as f64 - max - sum.ln()).collect()
    };
    let rows = reference.len() / vocab;
    let total: f64 = ours
        .chunks_exact(vocab)
        .zip(reference.chunks_exact(vocab))
        .map(|(q, p)| {
            let (lq, lp) = (log_softmax(q), log_softmax(p));
            lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>()
        })
        .sum();
    total / rows as f64
}

pub fn assert_no_failures(failures: Vec<String>) {
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// FNV-1a 64 of `data`: the fingerprint the reference scripts record (five lines in both languages).
pub fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}
