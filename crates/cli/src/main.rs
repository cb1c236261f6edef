//! `trustmesh`: the one binary. This file is the composition root for the CLI: it parses
//! flags (the only place that reads the environment), runs one command, and turns any error
//! into a one-line reason on stderr and a non-zero exit code, never a stack trace.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod authz;
mod bundle;
mod ca;
mod certs;
mod check;
mod control_plane;
mod debug;
mod demo_app;
mod enable;
mod http;
mod output;
mod probe;
mod prometheus;
mod proxy;
mod rotate;
mod token;
mod up;
mod verify;

use output::Format;

/// A zero-trust service mesh that reads Istio's and cert-manager's YAML verbatim.
#[derive(Debug, Parser)]
#[command(name = "trustmesh", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Load, validate and analyze a config folder (like `istioctl analyze`); exit 1 on errors.
    Check(check::CheckArgs),
    /// The certificate authorities: one per trust domain, kept in the state folder.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run the certificate controller once: issue every cert-manager Certificate that is
    /// missing, changed or due for renewal (what cert-manager's controller does continuously).
    Reconcile(certs::ReconcileArgs),
    /// Certificates with identity, issuer, not-after, renewal time and status
    /// (like `kubectl get certificates -o wide`).
    Certs(certs::CertsArgs),
    /// Trust bundles: export this mesh's, combine several trust domains', show one.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Set a namespace's mTLS mode: write its PeerAuthentication into the config folder.
    Enable(enable::EnableArgs),
    /// Authorization: decide a request offline exactly as the destination's proxy would.
    #[command(subcommand)]
    Authz(authz::AuthzCommand),
    /// The local mesh: the control plane and one proxy per WorkloadEntry of DIR, supervised,
    /// with a live view; Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Rotate certificates now (like `cmctl renew`): workload SVIDs and cert-manager
    /// Certificates, by name or --all.
    Rotate(rotate::RotateArgs),
    /// Run the control plane: CA per trust domain, config snapshot (watched), CSR signing and
    /// config stream (gRPC, 15012), admin API and metrics (15014); until SIGINT/SIGTERM.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Join tokens: one-time credentials a proxy proves its workload with at bootstrap.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run one workload's proxy: its certificate, inbound mTLS and policy, outbound, admin,
    /// metrics, SPIFFE Workload API; until SIGINT/SIGTERM.
    Proxy(proxy::ProxyArgs),
    /// A small HTTP app that answers with its name, the request and the caller's identity
    /// (the `x-forwarded-client-cert` its proxy sent); until SIGINT/SIGTERM.
    DemoApp(demo_app::DemoAppArgs),
    /// Prove the running mesh is what the config says: each workload's certificate, its
    /// modes, plaintext refused under STRICT, mTLS accepted; a table, exit 1 on any failure.
    Verify(verify::VerifyArgs),
    /// One connection explained: identities and chains, destination and DestinationRule,
    /// modes, the authorization decision and its policy, and a live attempt.
    Debug(debug::DebugArgs),
}

/// Where the mesh keeps its CA keys, issued certificates and bundles.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// State folder (CA keys, issued certificates).
    #[arg(long, env = "TRUSTMESH_STATE", default_value = "state", global = true)]
    pub state: PathBuf,
}

/// The `-o` flag shared by every command that prints data.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Ca(c) => ca::run(c),
        Command::Reconcile(a) => certs::reconcile(a),
        Command::Certs(a) => certs::run(a),
        Command::Bundle(c) => bundle::run(c),
        Command::Enable(a) => enable::run(a),
        Command::Authz(c) => authz::run(c),
        Command::Up(a) => up::run(a),
        Command::Rotate(a) => rotate::run(a),
        Command::ControlPlane(a) => control_plane::run(a),
        Command::Token(c) => token::run(c),
        Command::Proxy(a) => proxy::run(a),
        Command::DemoApp(a) => demo_app::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Debug(a) => debug::run(a),
    };
    match result {
        Ok(code) => code,
        // `trustmesh certs | head`: the reader left; that is not a failure of ours.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: the chain of causes joined, as kubectl and istioctl print them.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
