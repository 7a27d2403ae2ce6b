//! Black-box tests of the HTTP API against a real PostgreSQL. One test binary, so the cluster is
//! started once; every test gets a fresh database.

mod admin;
mod binary;
mod cli;
mod connections;
mod contract;
mod deploy;
mod docs;
mod fake_supabase;
mod helpers;
mod http;
mod images;
mod layout;
mod links;
mod manage;
mod metrics;
mod migrations;
mod outage;
mod pipeline;
mod pooler;
mod private;
mod probes;
mod reconcile;
mod replicas;
mod s3;
mod supabase;
mod throttle;
mod uploads;
