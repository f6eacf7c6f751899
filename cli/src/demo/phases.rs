//! The demo's six steps, each as its actor does it: the model owner trains and compiles; the
//! data owner generates a key and encrypts; the batch is uploaded; the service runs the
//! pipeline; the data owner fetches and decrypts.

use super::{Demo, IRIS_CSV};
use crate::local::{bar, run_local};
use crate::output::{bytes, dur, status_line, write_predictions};
use crate::store::{self, ClientSide};
use anyhow::{Result, bail};
use fhe_batch_core::job::JobState;
use fhe_batch_core::layout;
use fhe_batch_core::model::ModelPackage;
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::job_status;
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::SecretKey;
use fhe_batch_local::FsStore;
use fhe_batch_train::data::{read_labelled_csv, read_records, write_csv};
use fhe_batch_train::{Dataset, LinearFloatModel, Task, TrainOptions};
use std::path::PathBuf;
use std::time::Instant;
use tokio::runtime::Runtime;

/// The model owner's output: the float model, its compiled package, and where it is written.
pub(super) struct Trained {
    pub iris: Dataset,
    pub iris_path: PathBuf,
    pub model: LinearFloatModel,
    pub pkg: ModelPackage,
    pub model_dir: PathBuf,
}

/// The data owner's records, as read, quantized and encrypted.
pub(super) struct Encrypted {
    pub side: ClientSide,
    /// The records CSV read as a labelled data set (its labels are the truth to score against).
    pub labelled: Dataset,
    /// Feature values, `n` rows of `f`.
    pub raw: Vec<f64>,
    pub quantized: Vec<u64>,
    pub n: usize,
    pub f: usize,
    /// The batch file's bytes (taken by the upload), their size, and the SHA-256 of its
    /// header (the results must answer exactly this batch).
    pub batch: Vec<u8>,
    pub up: u64,
    pub header_sha256: [u8; 32],
}

/// The decrypted results and where the predictions CSV is.
pub(super) struct Decrypted {
    pub logits: Vec<i64>,
    pub down: u64,
    pub predictions_path: PathBuf,
}

impl Demo<'_> {
    /// [1/6] The model owner trains a logistic regression on 80% of Iris and compiles it.
    pub(super) fn train_and_compile(&mut self) -> Result<Trained> {
        say!(
            self.quiet,
            "[1/6] train and compile a logistic regression on Iris (80/20 split)"
        );
        let t = Instant::now();
        let iris_path = self.dir.join("iris.csv");
        std::fs::write(&iris_path, IRIS_CSV)?;
        let iris = read_labelled_csv(&iris_path, "label", Task::Classification)?;
        let (train, holdout) = iris.split(0.2, 42);
        let model = fhe_batch_train::train(&train, &TrainOptions::default())?;
        let mut pkg = fhe_batch_train::compile(
            &model,
            &train,
            &holdout,
            self.args.n_bits,
            ParamSet::Glwe2048TUniform17,
        )?;
        pkg.manifest.report.evaluated_on = "holdout".into();
        let model_dir = self.dir.join("model");
        store::write_model_dir(&pkg, &model_dir)?;
        self.lap("train + compile", t);
        if !self.quiet {
            crate::output::print_model(&pkg);
        }
        Ok(Trained {
            iris,
            iris_path,
            model,
            pkg,
            model_dir,
        })
    }

    /// [2/6] The data owner's secret key, written owner-only.
    pub(super) fn keygen(&mut self) -> Result<SecretKey> {
        say!(
            self.quiet,
            "\n[2/6] generate the data owner's secret key (stays on this machine)"
        );
        let t = Instant::now();
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        let key_path = self.dir.join("client.key");
        key.save(&key_path, true)?;
        self.lap("keygen", t);
        say!(
            self.quiet,
            "  {} (owner-only), fingerprint {}",
            key_path.display(),
            key.fingerprint()
        );
        Ok(key)
    }

    /// [3/6] The records CSV (Iris itself, or synthetic records drawn like it) into an
    /// encrypted batch file.
    pub(super) fn encrypt(&mut self, trained: &Trained, key: &SecretKey) -> Result<Encrypted> {
        let records_path = self.dir.join("records.csv");
        let records = self.args.records;
        let source = if records == trained.iris.len() {
            std::fs::copy(&trained.iris_path, &records_path)?;
            "the 150 Iris records".to_string()
        } else {
            let t = Instant::now();
            write_csv(&trained.iris.synthesize(records, 7), &records_path)?;
            self.lap("write synthetic CSV", t);
            format!("{records} synthetic records drawn like Iris")
        };
        say!(
            self.quiet,
            "\n[3/6] encrypt {source} ({})",
            records_path.display()
        );
        let t = Instant::now();
        let side = store::read_client_side(&trained.model_dir)?;
        let labelled = read_labelled_csv(&records_path, "label", Task::Classification)?;
        let raw = if labelled.feature_names == side.client.feature_names {
            labelled.x.clone()
        } else {
            read_records(&records_path, &side.client.feature_names)?
        };
        let f = side.client.n_features();
        let n = raw.len() / f;
        let quantized = side
            .client
            .records_columns(&raw)
            .map_err(|e| anyhow::anyhow!("{}: {e}", records_path.display()))?;
        self.lap("read + quantize CSV", t);
        let t = Instant::now();
        let pb = bar(n as u64, "encrypt", !self.quiet);
        let batch = fhe_batch_fhe::batch::encrypt_batch(
            key,
            &side.client,
            side.manifest.model_id,
            &quantized,
            &|k| pb.inc(k),
        );
        pb.finish_and_clear();
        let batch_path = self.dir.join(format!("{}.fheb", self.job));
        std::fs::write(&batch_path, &batch)?;
        self.lap("encrypt", t);
        let up = batch.len() as u64;
        say!(
            self.quiet,
            "  {} : {} ({:.1} B per record)",
            batch_path.display(),
            bytes(up),
            up as f64 / n as f64
        );
        Ok(Encrypted {
            side,
            labelled,
            raw,
            quantized,
            n,
            f,
            header_sha256: store::batch_header_sha256(&batch)?,
            batch,
            up,
        })
    }

    /// [4/6] Publishes the model and drops the batch in the local bucket's inbox.
    pub(super) fn upload(
        &mut self,
        rt: &Runtime,
        trained: &Trained,
        batch: Vec<u8>,
    ) -> Result<FsStore> {
        let bucket = FsStore::open(self.dir.join("bucket"))?;
        say!(
            self.quiet,
            "\n[4/6] publish the model and upload the batch to {}/inbox/",
            bucket.root().display()
        );
        let t = Instant::now();
        rt.block_on(async {
            store::publish_model_dir(&trained.model_dir, &bucket).await?;
            bucket.put(&layout::inbox(&self.job), batch).await?;
            anyhow::Ok(())
        })?;
        self.lap("upload", t);
        say!(
            self.quiet,
            "  {}",
            status_line(&rt.block_on(job_status(&bucket, &self.job))?)
        );
        Ok(bucket)
    }

    /// [5/6] The service: ingest and workers; fails unless the job succeeded.
    pub(super) fn run_pipeline(&mut self, rt: &Runtime, bucket: &FsStore) -> Result<()> {
        let quiet = self.quiet;
        say!(
            quiet,
            "\n[5/6] run the pipeline: ingest, queue, {} workers (the cloud side sees only ciphertexts)",
            self.args.workers
        );
        let t = Instant::now();
        let report = rt.block_on(run_local(bucket, self.args.workers, !quiet))?;
        self.lap("pipeline (ingest + evaluate)", t);
        let st = rt.block_on(job_status(bucket, &self.job))?;
        say!(
            quiet,
            "  ingest {}, evaluation {} ({} chunks written, {} duplicates, {} failed)",
            dur(report.ingest_time),
            dur(report.work_time),
            report.written,
            report.duplicates,
            report.failed
        );
        say!(quiet, "  {}", status_line(&st));
        if st.state != JobState::Succeeded {
            for f in &st.failures {
                say!(quiet, "  failure: {}", f.reason);
            }
            bail!("the job did not succeed");
        }
        Ok(())
    }

    /// [6/6] The data owner fetches the results, decrypts them and writes the predictions CSV.
    pub(super) fn fetch_and_decrypt(
        &mut self,
        rt: &Runtime,
        bucket: &FsStore,
        key: &SecretKey,
        enc: &Encrypted,
    ) -> Result<Decrypted> {
        say!(
            self.quiet,
            "\n[6/6] fetch and decrypt the results (only the key holder can)"
        );
        let t = Instant::now();
        let results = rt.block_on(store::read_results_from_store(bucket, &self.job))?;
        let down: u64 = results.iter().map(|(_, b)| b.len() as u64).sum();
        self.lap("fetch", t);
        let t = Instant::now();
        let pb = bar(enc.n as u64, "decrypt", !self.quiet);
        // Bound: every result must answer this job and this batch.
        let expected = fhe_batch_fhe::batch::ExpectedBatch {
            job: self.job.clone(),
            batch_header_sha256: Some(enc.header_sha256),
        };
        let logits = fhe_batch_fhe::batch::decrypt_job_for(
            key,
            &enc.side.client,
            &enc.side.manifest.model_id,
            &expected,
            &results,
            &|k| pb.inc(k),
        )?;
        pb.finish_and_clear();
        self.lap("decrypt", t);
        let t = Instant::now();
        let predictions_path = self.dir.join("predictions.csv");
        write_predictions(&predictions_path, &enc.side.client, &logits)?;
        self.lap("write predictions CSV", t);
        Ok(Decrypted {
            logits,
            down,
            predictions_path,
        })
    }
}
