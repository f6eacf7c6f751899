//! `fhe-batch status`: one job's state (or every job's), as a line or as JSON.

use super::common::{StoreArg, job_arg, runtime};
use crate::output;
use anyhow::Result;
use fhe_batch_core::pipeline::{job_status, list_jobs};

/// Show a job's state (QUEUED, RUNNING done/total, SUCCEEDED, FAILED with reasons), or list jobs.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    job: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let rt = runtime()?;
    let s = rt.block_on(args.store.open())?;
    let jobs = match &args.job {
        Some(j) => vec![job_arg(j)?],
        None => rt.block_on(list_jobs(&s))?,
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
        }
    }
    Ok(())
}
