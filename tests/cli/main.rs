//! End-to-end tests of the `forge` binary: real workspaces in temp dirs, real shell stages, real
//! processes (including `kill -9`), real servers on loopback.

mod bfcl;
mod engine;
mod model;
mod remote;
mod sft;
mod support;
