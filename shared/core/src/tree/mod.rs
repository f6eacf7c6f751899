//! Tree ensembles, the second model family.
//!
//! The client does the comparisons in the clear, on its own machine: for every distinct
//! threshold the ensemble uses it sends one *thermometer bit* `[x_f > t]` (or `[x_f >= t]`),
//! so features need no quantization. The server only combines bits: a branch goes to its `yes`
//! child when its bit equals `yes_when`. Leaves carry integer values (one per output) at a
//! common scale; the integer reference [`TreeModel::eval_plain`] is what decryption must give.
//!
//! - [`ir`]: thresholds, trees with integer leaves, the integer reference;
//! - [`planner`]: the ensemble compiled into one bootstrap per pair of sibling leaves;
//! - [`plan`]: the compiled plan the server evaluates, and its proof ([`ForestPlan::validate`]);
//! - [`noise`]: tfhe's noise figures per parameter set, and our decoding tail;
//! - [`readout`]: the client's side: thermometer bits in, slot sums to a prediction out.
//!
//! The family's server part is a [`ForestPlan`], its client part a [`ForestClient`]; both
//! implement the model-family traits of [`crate::model`].

mod family;
pub mod ir;
pub mod noise;
pub mod plan;
pub mod planner;
pub mod readout;

pub use ir::{QNode, QTree, Threshold, TreeModel};
pub use noise::{BootstrapNoise, TAIL_SIGMAS};
pub use plan::{ForestPlan, Lut, PlanError, Program};
pub use planner::{Layout, MAX_LEAF_RANGE, build_plan, build_plan_in, plan_layout, plan_layout_as};
pub use readout::{ForestClient, PostTransform, Readout, SlotReadout, sigmoid, transform};
