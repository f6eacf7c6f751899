//! Fault injection: the points in a chunk's handling where a crash or an error can strike, and
//! the probe that tests and the chaos benchmark install on a [`Worker`](super::Worker) to strike
//! there. Production workers have no probe.

use crate::ids::JobId;

/// The places in a chunk's handling where a crash or an error can strike. Tests and the chaos
/// benchmark inject faults there through a [`FaultProbe`]; production workers have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// After the checks, before the chunk's ciphertexts are read.
    BeforeRead,
    /// After evaluation, before the result is encoded.
    AfterEvaluate,
    /// Just before the create-once write of the result.
    BeforeResultWrite,
    /// Just after the result was written, before the outcome is reported.
    AfterResultWrite,
    /// After a successful outcome, before the message is acknowledged (queue loop only).
    BeforeAck,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::BeforeRead,
        FaultPoint::AfterEvaluate,
        FaultPoint::BeforeResultWrite,
        FaultPoint::AfterResultWrite,
        FaultPoint::BeforeAck,
    ];
}

/// Called at each [`FaultPoint`]; an `Err` makes the attempt fail as a transient error (the
/// message is redelivered), and a panic unwinds like a crash of the worker.
pub trait FaultProbe: Send + Sync {
    fn check(&self, point: FaultPoint, job: &JobId, chunk: u32) -> Result<(), String>;
}
