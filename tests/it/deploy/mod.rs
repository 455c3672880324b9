//! What ships for containers: the demo replica mode the examples run as their model
//! service, the Dockerfile, the Compose file and the Kubernetes manifests, checked
//! against each other and against the config they carry.

mod compose;
mod dockerfile;
mod kubernetes;
mod python;
mod replica_only;
