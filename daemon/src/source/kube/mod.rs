//! The Kubernetes API source (being built).

pub mod access;
