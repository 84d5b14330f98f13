//! splitvm: a KVM VMM whose vCPUs run with a split irqchip. The local APIC
//! stays in KVM; the I/O APIC and all MSI routing live in userspace.

pub mod api;
pub mod cli;
pub mod coalesced;
pub mod config;
pub mod counters;
pub mod error;
pub mod forensics;
pub mod host;
pub mod initramfs;
pub mod irqchip;
pub mod kvm_stats;
pub mod loader;
pub mod logger;
pub mod output;
pub mod paths;
pub mod picture;
pub mod runner;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod sources;
pub mod startup;
pub mod stats;
pub mod svg;
pub mod top;
pub mod trace;
pub mod vcpu;
pub mod virtio_setup;
pub mod vm;
pub mod vmm;
