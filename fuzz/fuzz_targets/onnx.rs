#![no_main]
// The ONNX importer on hostile model files: typed errors, never a panic; a model that imports
// evaluates one record without panicking either.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(imported) = fhe_batch_onnx::import_onnx(data) {
        let x = vec![0.5f32; imported.model.n_features()];
        let _ = imported.model.predict(&x);
    }
});
