//! The tvunet host toolchain as a library: data, model, training, export, evaluation and the
//! device client. The `tvunet` binary is a thin command line over it.

pub mod client;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod lung;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod pretext;
pub mod pseudo;
pub mod quantize;
pub mod train;
