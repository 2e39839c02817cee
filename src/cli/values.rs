//! The command line's spelling of the library's choices: clap's value enums live here, so that the
//! library's types carry no command-line derives.

use clap::ValueEnum;

use recall::embed::{DevicePreference, EncoderKind};
use recall::projector::OnError;
use recall::search::SearchMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Nearest chunks by cosine similarity of embeddings.
    Dense,
    /// BM25 over the chunks' words (English stemming, stop words dropped).
    Lexical,
    /// Dense and lexical rankings fused by reciprocal rank (the default).
    Hybrid,
}

impl From<Mode> for SearchMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Dense => SearchMode::Dense,
            Mode::Lexical => SearchMode::Lexical,
            Mode::Hybrid => SearchMode::Hybrid,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnErrorArg {
    /// Record it in the failures table and go on.
    Park,
    /// Stop before it, with the checkpoint just before it.
    Stop,
}

impl From<OnErrorArg> for OnError {
    fn from(choice: OnErrorArg) -> Self {
        match choice {
            OnErrorArg::Park => OnError::Park,
            OnErrorArg::Stop => OnError::Stop,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// A GPU when this build has CUDA and one is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl From<Device> for DevicePreference {
    fn from(device: Device) -> Self {
        match device {
            Device::Auto => DevicePreference::Auto,
            Device::Cpu => DevicePreference::Cpu,
            Device::Cuda => DevicePreference::Cuda,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoder {
    /// recall's CPU forward: unpadded sequences, fused QKV, fused kernels (CPU only).
    Packed,
    /// candle-transformers' BertModel on padded batches with an attention mask (any device).
    Padded,
}

impl From<Encoder> for EncoderKind {
    fn from(encoder: Encoder) -> Self {
        match encoder {
            Encoder::Packed => EncoderKind::Packed,
            Encoder::Padded => EncoderKind::Padded,
        }
    }
}
