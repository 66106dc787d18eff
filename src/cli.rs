//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error (bad recipe, unreadable input, store failure, ...)
  2  usage error (unknown flag, missing argument)
  3  an input differs from the lock file (with --locked), or there is no lock file
  4  integrity failure: a stored blob does not match its digest, `kiln verify` found
     a problem (signature, provenance, SBOM, rebuild), or a channel's history or a release
     record was tampered with

Environment:
  KILN_STORE          store location (same as --store)
  AWS_*, GOOGLE_*, AZURE_*
                      credentials and settings of s3://, gs:// and az:// stores (AWS_ENDPOINT,
                      AWS_REGION, AWS_ALLOW_HTTP, ...); --store-option KEY=VALUE overrides them
  SOURCE_DATE_EPOCH   timestamp for every file and document, unless --source-date-epoch is given
  KILN_TRUST_CACHE    ':'-separated public keys whose build cache entries `kiln build` trusts
                      (same as --trust-cache)
  KILN_CACHE_KEY      private key that signs the cache entries `kiln build` writes (--cache-key)
  NO_COLOR            disables colour";

/// kiln bakes bit-for-bit reproducible OCI images from declarative recipes.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct Cli {
    /// Store location: a folder, file:///abs/path, memory://, s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX or az://CONTAINER/PREFIX
    /// [default: $XDG_DATA_HOME/kiln/store or ~/.local/share/kiln/store]
    #[arg(long, global = true, env = "KILN_STORE", value_name = "LOCATION")]
    pub store: Option<String>,

    /// A store backend option, KEY=VALUE (object_store config keys such as aws_endpoint,
    /// aws_region, aws_allow_http, google_service_account, azure_storage_account_name);
    /// repeatable; overrides the AWS_*, GOOGLE_* and AZURE_* environment variables.
    #[arg(long = "store-option", global = true, value_name = "KEY=VALUE")]
    pub store_options: Vec<String>,

    /// Print machine-readable JSON on stdout instead of a human report.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing but errors and warnings.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a recipe into the store and tag it NAME:VERSION.
    Build(BuildArgs),
    /// Hash every input of a recipe and write its lock file (RECIPE with .lock).
    Lock(LockArgs),
    /// List the tagged images in the store.
    Images,
    /// Show an image's index, manifests, configs and layers.
    Inspect(InspectArgs),
    /// Write an image as an OCI image layout folder or archive.
    Export(ExportArgs),
    /// Inspect the store itself.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Delete blobs no ref, log or referrer needs, once older than the grace period.
    Gc(GcArgs),
    /// Copy an image, its blobs and its referrers from one store to another.
    Copy(CopyArgs),
    /// Push an image and every artifact referring to it to a registry.
    Push(PushArgs),
    /// Pull an image by digest, and every artifact referring to it, from a registry.
    Pull(PullArgs),
    /// Make a signing key pair: NAME.key (PKCS#8, mode 0600) and NAME.pub (SPKI).
    Keygen(KeygenArgs),
    /// Sign an image (cosign simple signing) and attach the signature in the store.
    Sign(SignArgs),
    /// Audit an image: blobs, diff_ids, signatures, provenance and SBOM; optionally rebuild it.
    Verify(VerifyArgs),
    /// Write an image's release record (kiln.release/v1); its digest is the release id.
    Release(ReleaseArgs),
    /// Render a release, or a channel's head, for a provisioner (json, tfvars, k8s, env).
    Pin(PinArgs),
    /// Attach a signed approval of a release for one channel.
    Approve(ApproveArgs),
    /// Promote a release into a channel by policy, optionally copying it into another store.
    Promote(PromoteArgs),
    /// Point a channel back at a release it held before.
    Rollback(RollbackArgs),
    /// Revoke a release: pins, promotions and verification refuse it from then on.
    Revoke(RevokeArgs),
    /// Show a channel's entries after verifying the whole chain and every signature.
    History(HistoryArgs),
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// NAME:TAG, NAME@sha256:HEX or sha256:HEX of an image built with --sign (its provenance
    /// names the recipe, lock and epoch)
    pub reference: String,
    /// Also sign the release with this private key.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// A key trusted to have signed the image's provenance (SPKI PEM); repeatable. The record
    /// takes recipe, lock and epoch only from a provenance that verifies with one [default:
    /// the public half of --sign]
    #[arg(long, value_name = "PUB")]
    pub key: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    /// A release id (sha256:HEX) or CHANNEL/NAME for the channel's head
    pub target: String,
    /// json, tfvars, k8s or env
    #[arg(long, value_name = "FORMAT", value_parser = str::parse::<kiln_release::pin::Format>)]
    pub format: kiln_release::pin::Format,
    /// The registry repository the image is pushed to [default: the image name]
    #[arg(long, value_name = "REPO")]
    pub repository: Option<String>,
    /// Write the pin to FILE atomically instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With CHANNEL/NAME: the head entry must be signed by one of these keys; repeatable.
    #[arg(long, value_name = "PUB")]
    pub key: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ApproveArgs {
    /// The release id (sha256:HEX)
    pub release: String,
    /// The channel the approval is for.
    #[arg(long = "for", value_name = "CHANNEL")]
    pub channel: String,
    /// The approver's private key.
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The release id (sha256:HEX)
    pub release: String,
    /// The channel to promote into.
    #[arg(long, value_name = "CHANNEL")]
    pub to: String,
    /// The promoter's private key (listed for the channel in the policy).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The policy file (TOML).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Copy the release into this store and append the entry there.
    #[arg(long, value_name = "LOCATION")]
    pub to_store: Option<String>,
    /// Why, recorded in the signed entry.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// CHANNEL/NAME
    pub channel: String,
    /// The release id to go back to (it must have been in the channel).
    #[arg(long, value_name = "RELEASE")]
    pub to: String,
    /// The private key (listed for the channel in the policy).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The policy file (TOML).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Why, recorded in the signed entry.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The release id (sha256:HEX)
    pub release: String,
    /// The revoker's private key (one the policy lists in `revokers`).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The policy whose `revokers` may revoke.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Why, recorded in the signed revocation.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// CHANNEL/NAME
    pub channel: String,
    /// A key trusted to sign entries (SPKI PEM); repeatable [default: the policy's keys for
    /// the channel]
    #[arg(long, value_name = "PUB")]
    pub key: Vec<PathBuf>,
    /// The policy whose channel keys to trust when no --key is given.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// A checkpoint an earlier audit reported (SEQ@sha256:HEX): fail unless the chain still
    /// holds that entry, so a channel rewound past it is detected.
    #[arg(long, value_name = "SEQ@DIGEST", value_parser = str::parse::<kiln_release::channel::Seen>)]
    pub seen: Option<kiln_release::channel::Seen>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// NAME:TAG, NAME@sha256:HEX, sha256:HEX, or a release id (sha256:HEX)
    pub reference: String,
    /// A trusted public key (SPKI PEM); repeatable. Signatures by other keys are not accepted.
    /// Without one, only integrity is audited (blobs, diff_ids, SBOM file lists).
    #[arg(long, value_name = "PUB")]
    pub key: Vec<PathBuf>,
    /// Attestations whose absence fails the audit: sbom, provenance (comma-separated). Without
    /// this, a missing one is reported as a note.
    #[arg(long, value_name = "KIND", value_delimiter = ',', requires = "key")]
    pub require: Vec<kiln_attest::verify::Requirement>,
    /// Rebuild from the recipe, lock and epoch recorded in the provenance and compare.
    #[arg(long)]
    pub rebuild: bool,
    /// The checkout holding the recipe the provenance names (its path is recorded relative
    /// to this root) [default: the git checkout holding the current folder, else the current
    /// folder]
    #[arg(long, value_name = "DIR", requires = "rebuild")]
    pub source_root: Option<PathBuf>,
    /// How a rebuilt recipe's `[base] image` registry is reached.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// For a release id: also check that the release is or was in CHANNEL/NAME.
    #[arg(long, value_name = "CHANNEL/NAME", requires = "policy")]
    pub channel: Option<String>,
    /// With --channel: the policy whose keys for that channel sign its entries.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// With --channel: a checkpoint an earlier audit reported (SEQ@sha256:HEX); fail unless
    /// the chain still holds that entry.
    #[arg(long, value_name = "SEQ@DIGEST", requires = "channel", value_parser = str::parse::<kiln_release::channel::Seen>)]
    pub seen: Option<kiln_release::channel::Seen>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Write NAME.key and NAME.pub (neither may exist).
    #[arg(long, value_name = "NAME")]
    pub out: PathBuf,
    /// Key algorithm: p256 (ECDSA, cosign's default) or ed25519.
    #[arg(long = "type", value_name = "TYPE", default_value = "p256")]
    pub key_type: kiln_attest::KeyType,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// NAME:TAG, NAME@sha256:HEX or sha256:HEX
    pub reference: String,
    /// The private key (PKCS#8 PEM, as written by `kiln keygen`).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Re-hash every blob, walk every ref and referrer checking every descriptor's size;
    /// exit 4 listing each problem found.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also set right what was found: drop refs and referrer entries that lead to missing,
    /// corrupt or wrongly sized blobs, and move corrupt blobs to quarantine/.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Keep unreachable blobs and staging uploads younger than this (e.g. 30m, 24h, 7d), so
    /// builds in flight on other runners keep what they just uploaded.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// Report what would be deleted without deleting anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// NAME:TAG (tagged in the target too), NAME@sha256:HEX or sha256:HEX; from a registry,
    /// sha256:HEX
    pub reference: String,
    /// The store to copy from (any store location; --store-option applies to buckets), or a
    /// registry repository, docker://HOST[:PORT]/REPO.
    #[arg(long, value_name = "LOCATION")]
    pub from: String,
    /// The store to copy into, or a registry repository, docker://HOST[:PORT]/REPO[:TAG].
    #[arg(long, value_name = "LOCATION")]
    pub to: String,
    /// Into a registry: first sign the image for the destination repository with this key.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How registries are reached.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Reach HOST[:PORT] over plain HTTP instead of HTTPS; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Trust the CA certificates in FILE (PEM) for registries, besides the system's.
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Fail a request when a registry sends nothing for SECONDS, while kiln waits for its
    /// answer or within it (1 to 86400; a stalled request is not made again) [default: 60].
    #[arg(
        long = "registry-timeout",
        value_name = "SECONDS",
        env = kiln_registry::STALL_VARIABLE,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub stall_timeout: Option<u64>,
}

impl RegistryArgs {
    pub fn options(&self) -> kiln_registry::Options {
        kiln_registry::Options {
            insecure: self.insecure.clone(),
            ca: self.ca.clone(),
            docker_config: None,
            stall_timeout: self.stall_timeout.map_or(
                kiln_registry::client::DEFAULT_STALL_TIMEOUT,
                std::time::Duration::from_secs,
            ),
        }
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// NAME:TAG, NAME@sha256:HEX or sha256:HEX
    pub reference: String,
    /// HOST[:PORT]/REPO[:TAG] [default tag: the reference's]
    pub destination: String,
    /// First sign the image for the destination repository with this private key (the
    /// signature names HOST[:PORT]/REPO, so policies checking the repository accept it).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// HOST[:PORT]/REPO@sha256:HEX
    pub source: String,
    /// Tag the pulled image NAME:TAG in the store.
    #[arg(long, value_name = "NAME:TAG")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct EpochArg {
    /// Seconds since 1970 used for every timestamp (overrides SOURCE_DATE_EPOCH and the recipe).
    #[arg(long, value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// Fail if the lock file is missing or any input differs from it.
    #[arg(long)]
    pub locked: bool,
    #[command(flatten)]
    pub epoch: EpochArg,
    /// Threads for compression and for the platforms' layers made at once (the output bytes
    /// do not depend on this). [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,
    /// Read and hash every input file, ignoring digests remembered from earlier builds
    /// (kept in $XDG_CACHE_HOME/kiln/file-digests, keyed by size, times and inode).
    #[arg(long)]
    pub rehash: bool,
    /// Re-hash every blob taken from the store (cached layers, disk images, blobs already
    /// stored), not only those whose size or date is off; corrupt ones are replaced.
    #[arg(long)]
    pub verify_cache: bool,
    /// Sign the image with this private key and attach an SBOM and signed provenance.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// The root the provenance names the recipe relative to [default: the git checkout
    /// holding the recipe, else the recipe's folder]
    #[arg(long, value_name = "DIR", requires = "sign")]
    pub source_root: Option<PathBuf>,
    /// Sign the build cache entries this build writes with this private key [default: the
    /// --sign key; without either, entries are written unsigned].
    #[arg(long, value_name = "KEY", env = "KILN_CACHE_KEY")]
    pub cache_key: Option<PathBuf>,
    /// Use only build cache entries signed by this public key (SPKI PEM); repeatable, or a
    /// ':'-separated list. Other entries are ignored and their layers rebuilt.
    #[arg(long, value_name = "PUB", env = "KILN_TRUST_CACHE", value_delimiter = ':')]
    pub trust_cache: Vec<PathBuf>,
    /// Also write the image's release record, signed with the --sign key.
    #[arg(long, requires = "sign")]
    pub release: bool,
    /// How a `[base] image` registry is reached.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// Resolve Debian packages again from the repositories, instead of keeping the locked ones.
    #[arg(long)]
    pub update: bool,
    #[command(flatten)]
    pub epoch: EpochArg,
    /// How a `[base] image` registry is reached.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// NAME:TAG, NAME@sha256:HEX or sha256:HEX
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// NAME:TAG, NAME@sha256:HEX or sha256:HEX
    pub reference: String,
    /// Write an OCI image layout into this folder (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["oci_archive", "disk"],
        required_unless_present_any = ["oci_archive", "disk"]
    )]
    pub oci_layout: Option<PathBuf>,
    /// Write an OCI image layout as a tar archive to this file.
    #[arg(long, value_name = "FILE", conflicts_with = "disk")]
    pub oci_archive: Option<PathBuf>,
    /// Write the image's disk images (from the recipe's [disk] table) into this folder
    /// (created if missing): disk.raw, disk.qcow2, disk.vhd as built.
    #[arg(long, value_name = "DIR")]
    pub disk: Option<PathBuf>,
    /// With --disk: the platform whose disk images to write (OS/ARCH), needed when the
    /// image has disks for several.
    #[arg(long, value_name = "OS/ARCH", requires = "disk")]
    pub platform: Option<String>,
    /// The tag recorded in the layout [default: the reference's tag, else the image version]
    #[arg(long)]
    pub tag: Option<String>,
}
