#![no_main]
// The ONNX importer on hostile model files: typed errors, never a panic; a model that imports
// evaluates one record (and runs its client-side preprocessing) without panicking either.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(imported) = fhe_batch_onnx::import_onnx(data) {
        let x = vec![0.5f32; imported.model.n_features()];
        let _ = imported.model.predict(&x);
        // A pipeline's client-side preprocessing, on a complete record and on one with a hole.
        let mut raw = vec![0.5f64; imported.raw_features()];
        let _ = imported.predict_raw(&raw);
        if let Some(v) = raw.first_mut() {
            *v = f64::NAN;
        }
        let _ = imported.predict_raw(&raw);
    }
});
