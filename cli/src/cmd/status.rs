//! `fhe-batch status`: one job's state (or every job's), as a line or as JSON.

use super::common::{StoreArg, job_arg, runtime};
use crate::output;
use anyhow::Result;
use fhe_batch_core::ids::TenantId;
use fhe_batch_core::pipeline::{job_status, list_tenant_jobs};

/// Show a job's state (QUEUED, RUNNING done/total, SUCCEEDED, FAILED with reasons), or list jobs.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    job: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Wait until the job ends (SUCCEEDED or FAILED), with a progress bar; polls with backoff
    /// (1 s, doubling, at most 30 s). Exits non-zero when the job FAILED.
    #[arg(long, requires = "job")]
    wait: bool,
    /// On a multi-tenant stack, list this tenant's jobs (jobs/<tenant>/); name one job as
    /// <tenant>/<job>.
    #[arg(long, conflicts_with = "job")]
    tenant: Option<String>,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let rt = runtime()?;
    let s = rt.block_on(args.store.open())?;
    if let (true, Some(j)) = (args.wait, &args.job) {
        return rt.block_on(wait(&s, &job_arg(j)?, args.json));
    }
    let jobs = match &args.job {
        Some(j) => vec![job_arg(j)?],
        None => {
            let tenant = args.tenant.as_deref().map(TenantId::parse).transpose()?;
            rt.block_on(list_tenant_jobs(&s, tenant.as_ref()))?
        }
    };
    if jobs.is_empty() {
        println!("no jobs in {}", s.describe());
    }
    for job in jobs {
        let st = rt.block_on(job_status(&s, &job))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            println!("{}", output::status_line(&st));
            for f in &st.failures {
                match f.chunk {
                    Some(c) => println!("  chunk {c}: {}", f.reason),
                    None => println!("  {}", f.reason),
                }
            }
            for r in &st.refused_uploads {
                println!("  refused: {r}");
            }
        }
    }
    Ok(())
}

/// Polls a job until it ends, with a progress bar over its chunks.
async fn wait(
    store: &impl fhe_batch_core::ports::ObjectStore,
    job: &fhe_batch_core::ids::JobId,
    json: bool,
) -> Result<()> {
    use fhe_batch_core::job::JobState;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} chunks ({elapsed})")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut delay = std::time::Duration::from_secs(1);
    let st = loop {
        let st = job_status(store, job).await?;
        bar.set_length(u64::from(st.chunks_total));
        bar.set_position(u64::from(st.chunks_done));
        bar.set_message(format!("job {job}: {}", st.state));
        if matches!(st.state, JobState::Succeeded | JobState::Failed) {
            break st;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    };
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        println!("{}", output::status_line(&st));
        for f in &st.failures {
            println!("  {}", f.reason);
        }
    }
    if st.state == JobState::Failed {
        anyhow::bail!("job {job} FAILED");
    }
    Ok(())
}
