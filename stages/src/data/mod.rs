//! The data half of the pipeline: rows in any supported format → canonical [`schema`] records →
//! verified → split → rendered with the model's chat template and tokenized.

pub mod format;
pub mod io;
pub mod normalize;
pub mod schema;
pub mod split;
pub mod synth;
pub mod template;
pub mod verify;
pub mod xlam_types;
