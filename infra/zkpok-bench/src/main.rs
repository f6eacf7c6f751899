// Prover and verifier cost of tfhe's zero-knowledge proofs of well-formed compact public-key
// ciphertexts (ZKV2) for the 2_2 parameter set with its dedicated PKE parameters.
use std::time::Instant;
use tfhe::shortint::parameters::*;
use tfhe::zk::{CompactPkeCrs, ZkComputeLoad};
use tfhe::{ClientKey, CompactPublicKey, ConfigBuilder, ProvenCompactCiphertextList};

fn main() {
    let params = PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128;
    let cpk = PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128;
    let casting = PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128;
    let config = ConfigBuilder::with_custom_parameters(params)
        .use_dedicated_compact_public_key_parameters((cpk, casting))
        .build();
    let ck = ClientKey::generate(config);
    let pk = CompactPublicKey::try_new(&ck).unwrap();
    let meta = b"fhe-batch";
    for values in [30usize, 256] {
        let bits = values * 8;
        let t = Instant::now();
        let crs = CompactPkeCrs::from_config(config, bits).unwrap();
        let crs_s = t.elapsed();
        let mut crs_bytes = Vec::new();
        tfhe::safe_serialization::safe_serialize(&crs, &mut crs_bytes, 1 << 40).unwrap();
        for load in [ZkComputeLoad::Proof, ZkComputeLoad::Verify] {
            let mut b = ProvenCompactCiphertextList::builder(&pk);
            for i in 0..values {
                b.push(i as u8);
            }
            let t = Instant::now();
            let list = b.build_with_proof_packed(&crs, meta, load).unwrap();
            let prove = t.elapsed();
            let t = Instant::now();
            list.verify(&crs, &pk, meta)
                .is_valid()
                .then_some(())
                .expect("valid");
            let verify = t.elapsed();
            let mut list_bytes = Vec::new();
            tfhe::safe_serialization::safe_serialize(&list, &mut list_bytes, 1 << 40).unwrap();
            println!(
                "values={values} (u8) load={load:?} crs_bytes={} crs_s={:.2} prove_s={:.3} verify_s={:.3} list_bytes={}",
                crs_bytes.len(),
                crs_s.as_secs_f64(),
                prove.as_secs_f64(),
                verify.as_secs_f64(),
                list_bytes.len()
            );
        }
    }
}
