//! Secret-key and public-key batches side by side: encryption time and bytes per record for
//! the chunk shapes our model families use, and the public key's own cost. Only the client's
//! work is measured (the server's evaluation does not depend on how a chunk was encrypted,
//! beyond the public-key expansion's rotations, which cost less than reading the chunk).

use super::{machine, median};
use anyhow::Result;
use fhe_batch_core::format::ChunkShape;
use fhe_batch_core::params::{Encryption, ParamSet};
use fhe_batch_fhe::{Encryptor, PublicKey, SecretKey};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// One chunk shape: columns per record, records per chunk, bits per column value.
struct Workload {
    name: &'static str,
    columns: u32,
    records_per_chunk: u32,
    column_bits: u8,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "Iris linear (4 columns, full chunks)",
        columns: 4,
        records_per_chunk: 2048,
        column_bits: 8,
    },
    Workload {
        name: "breast-cancer linear (30 columns, full chunks)",
        columns: 30,
        records_per_chunk: 2048,
        column_bits: 8,
    },
    Workload {
        name: "breast-cancer MLP 30-32-2 (30 columns, 562 per chunk)",
        columns: 30,
        records_per_chunk: 562,
        column_bits: 12,
    },
    Workload {
        name: "MNIST MLP 784-128-10 (784 columns, 140 per chunk)",
        columns: 784,
        records_per_chunk: 140,
        column_bits: 12,
    },
];

/// Encrypts `chunks` full chunks of random values with `key`, in parallel as `encrypt` does;
/// returns the time and the payload bytes.
fn encrypt(key: Encryptor<'_>, w: &Workload, chunks: usize, rng: &mut impl Rng) -> (Duration, u64) {
    let shape = ChunkShape {
        input_columns: w.columns,
        records_per_chunk: w.records_per_chunk,
        encryption: key.kind(),
    };
    let top = 1u64 << w.column_bits.min(8);
    let values: Vec<Vec<u64>> = (0..chunks)
        .map(|_| {
            (0..w.columns as usize * w.records_per_chunk as usize)
                .map(|_| rng.gen_range(0..top))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let bytes: u64 = values
        .par_iter()
        .map(|v| key.encrypt_columns(shape, w.column_bits, v).len() as u64)
        .sum();
    (t.elapsed(), bytes)
}

pub(super) fn run(iters: usize, json: bool) -> Result<()> {
    let params = ParamSet::Glwe2048TUniform17;
    let secret = SecretKey::generate(params);
    let t = Instant::now();
    let public = PublicKey::generate(&secret, None);
    let keygen = t.elapsed();
    let pk_bytes = public.to_bytes().len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut rows = Vec::new();
    for w in &WORKLOADS {
        // About 8,192 records or 4 chunks, whichever is more.
        let chunks = (8192 / w.records_per_chunk as usize).max(4);
        let records = (chunks * w.records_per_chunk as usize) as f64;
        let mut row = serde_json::json!({ "workload": w.name });
        for (label, key) in [
            ("secret_key", Encryptor::Secret(&secret)),
            ("public_key", Encryptor::Public(&public)),
        ] {
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..iters.max(1) {
                let (d, b) = encrypt(key, w, chunks, &mut rng);
                times.push(d);
                bytes = b;
            }
            row[label] = serde_json::json!({
                "encrypt_us_per_record": median(times).as_secs_f64() * 1e6 / records,
                "bytes_per_record": bytes as f64 / records,
            });
        }
        rows.push(row);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "machine": machine(),
                "public_key_bytes": pk_bytes,
                "public_key_generation_ms": keygen.as_secs_f64() * 1e3,
                "workloads": rows,
            }))?
        );
        return Ok(());
    }
    println!("machine: {}", machine());
    println!(
        "public key: {} bytes, generated in {:.2} ms (noise bound {:.1} bits vs {} for secret-key encryption)",
        pk_bytes,
        keygen.as_secs_f64() * 1e3,
        Encryption::PublicKey.noise_bound_log2(params),
        params.noise_bound_log2()
    );
    let figure =
        |r: &serde_json::Value, kind: &str, what: &str| r[kind][what].as_f64().unwrap_or(0.0);
    let table: Vec<(&str, [f64; 4])> = rows
        .iter()
        .map(|r| {
            (
                r["workload"].as_str().unwrap_or(""),
                [
                    figure(r, "secret_key", "encrypt_us_per_record"),
                    figure(r, "public_key", "encrypt_us_per_record"),
                    figure(r, "secret_key", "bytes_per_record"),
                    figure(r, "public_key", "bytes_per_record"),
                ],
            )
        })
        .collect();
    println!(
        "\n{:<56} {:>14} {:>14} {:>12} {:>12}",
        "workload", "sk us/record", "pk us/record", "sk B/record", "pk B/record"
    );
    for (name, [sk_us, pk_us, sk_b, pk_b]) in &table {
        println!("{name:<56} {sk_us:>14.2} {pk_us:>14.2} {sk_b:>12.0} {pk_b:>12.0}");
    }
    for (name, [sk_us, pk_us, sk_b, pk_b]) in &table {
        println!(
            "workload={name:?} sk_encrypt_us_per_record={sk_us:.3} pk_encrypt_us_per_record={pk_us:.3} sk_bytes_per_record={sk_b:.1} pk_bytes_per_record={pk_b:.1}"
        );
    }
    Ok(())
}
