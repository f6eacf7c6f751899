//! Key and data hygiene, on the real binary: the secret key never reaches the bucket or the
//! logs, no ciphertext bytes are logged (at the most verbose level), and decrypting sends
//! nothing back to the service, whether it succeeds or fails.

mod common;
use common::{data, walk};

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the CLI at trace level; returns its output.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fhe-batch"))
        .args(args)
        .current_dir(dir)
        .env_remove("FHE_BATCH_STORE")
        .env("FHE_BATCH_LOG", "trace")
        .output()
        .expect("runs")
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

/// The ways a program could print `secret`'s bytes: raw, hex (either case), base64 (at each
/// alignment), Rust's `{:?}` of a byte slice, and the decimal u64 words of ciphertexts.
/// Checks 24-byte windows at offsets spread over the secret.
fn leak_forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut forms = Vec::new();
    let step = (secret.len() / 40).max(1);
    for at in (0..secret.len().saturating_sub(24)).step_by(step) {
        let w = &secret[at..at + 24];
        forms.push((format!("raw@{at}"), w.to_vec()));
        forms.push((format!("hex@{at}"), hex::encode(w).into_bytes()));
        forms.push((format!("HEX@{at}"), hex::encode_upper(w).into_bytes()));
        for shift in 0..3 {
            // The inner characters of base64 do not depend on what precedes the window.
            let b = base64(&w[shift..]);
            forms.push((format!("base64@{at}+{shift}"), b.as_bytes()[4..24].to_vec()));
        }
        forms.push((
            format!("debug@{at}"),
            format!("{:?}", &w[..12])
                .trim_matches(['[', ']'])
                .as_bytes()
                .to_vec(),
        ));
        let words: Vec<String> = w[..16]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()).to_string())
            .collect();
        forms.push((format!("u64@{at}"), words.join(", ").into_bytes()));
    }
    forms
}

fn find_leak(hay: &[u8], forms: &[(String, Vec<u8>)]) -> Option<String> {
    forms
        .iter()
        .find(|(_, f)| hay.windows(f.len()).any(|w| w == f.as_slice()))
        .map(|(name, _)| name.clone())
}

fn snapshot(bucket: &Path) -> BTreeMap<PathBuf, String> {
    walk(bucket)
        .into_iter()
        .map(|p| {
            let sum = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
            (p, sum)
        })
        .collect()
}

#[test]
fn the_detector_finds_planted_leaks() {
    let secret: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let forms = leak_forms(&secret);
    let w = &secret[1000..1100];
    for planted in [
        format!("INFO key={}", hex::encode(w)),
        format!("DEBUG bytes={:?}", w),
        format!("TRACE b64={}", base64(&secret[990..1100])),
        hex::encode_upper(w),
    ] {
        assert!(find_leak(planted.as_bytes(), &forms).is_some(), "{planted}");
    }
    assert!(find_leak(b"INFO job=claims chunk=0 outcome=written", &forms).is_none());
}

#[test]
fn no_key_or_ciphertext_in_logs_or_bucket_and_decrypt_sends_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let iris = data("iris.csv");
    let mut logs = Vec::new();
    let mut step = |args: &[&str], must_succeed: bool| {
        let out = run(d, args);
        assert_eq!(
            out.status.success(),
            must_succeed,
            "fhe-batch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        logs.extend_from_slice(&out.stdout);
        logs.extend_from_slice(&out.stderr);
    };
    step(&["train", "--data", &iris, "--out", "model"], true);
    step(&["keygen", "--out", "client.key"], true);
    step(&["keygen", "--out", "other.key"], true);
    step(
        &[
            "encrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--input",
            &iris,
            "--out",
            "claims.fheb",
        ],
        true,
    );
    step(&["publish", "--model", "model"], true);
    step(&["submit", "claims.fheb"], true);
    step(&["run", "--workers", "2"], true);
    step(&["status"], true);
    step(&["status", "claims", "--json"], true);
    step(&["fetch", "claims", "--out", "results"], true);

    // Decrypting, with the right key or the wrong one, changes nothing in the bucket.
    let bucket = d.join(".fhe-batch/bucket");
    let before = snapshot(&bucket);
    step(
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--job",
            "claims",
            "--out",
            "p.csv",
        ],
        true,
    );
    step(
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "other.key",
            "--job",
            "claims",
            "--out",
            "q.csv",
        ],
        false,
    );
    step(
        &[
            "decrypt",
            "--model",
            "model",
            "--key",
            "client.key",
            "--results",
            "results",
            "--out",
            "r.csv",
        ],
        true,
    );
    assert_eq!(snapshot(&bucket), before, "decrypt wrote to the bucket");
    assert_eq!(
        std::fs::read(d.join("p.csv")).unwrap(),
        std::fs::read(d.join("r.csv")).unwrap()
    );

    // Secrets: the key file body (its key bits) and the ciphertexts going up and coming back.
    let key = std::fs::read(d.join("client.key")).unwrap();
    let key_forms = leak_forms(&key[36..]);
    let batch = std::fs::read(d.join("claims.fheb")).unwrap();
    let batch_forms = leak_forms(&batch[200..]);
    let result = walk(&d.join("results"))
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .next()
        .unwrap();
    let result_forms = leak_forms(&result[72..result.len() - 32]);
    assert!(logs.len() > 1000, "trace logs were produced");
    for (what, forms) in [
        ("secret key", &key_forms),
        ("batch ciphertext", &batch_forms),
        ("result ciphertext", &result_forms),
    ] {
        if let Some(form) = find_leak(&logs, forms) {
            panic!("{what} bytes in the logs ({form})");
        }
    }
    for object in walk(&bucket) {
        let bytes = std::fs::read(&object).unwrap();
        if let Some(form) = find_leak(&bytes, &key_forms) {
            panic!("secret key bytes in {} ({form})", object.display());
        }
    }
}
