//! `meridian token`: development Ledger API tokens. `meridian token --key FILE --participant
//! ID --user U --act-as P ...` prints a token signed with the private key file (which must be
//! mode 0600); `meridian token keygen --out DIR` writes an EdDSA key pair: the private key
//! (0600) and the JWKS and public PEM a participant's `[ledger_auth]` points at.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use meridian_auth::mint::{parse_lifetime_s, TokenGrant, TokenMinter};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: Option<TokenCommand>,
    /// The private key file (PEM: EdDSA, ES256 or RS256; mode 0600).
    #[arg(long, required = true)]
    pub key: Option<PathBuf>,
    /// The participant the token is for (its `aud`).
    #[arg(long, required = true)]
    pub participant: Option<String>,
    /// The user id (`sub`).
    #[arg(long, required = true)]
    pub user: Option<String>,
    /// Parties the user may act as (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub act_as: Vec<String>,
    /// Parties the user may read as.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub read_as: Vec<String>,
    /// Grant participant administration (AllocateParty).
    #[arg(long)]
    pub admin: bool,
    /// How long the token is valid: 90s, 15m, 1h, 2d (the participant refuses tokens longer
    /// than its max_token_lifetime_s, default 24 h).
    #[arg(long, default_value = "1h")]
    pub lifetime: String,
    /// The key id for the header (default: derived from the public key, as `keygen`'s JWKS).
    #[arg(long)]
    pub kid: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an EdDSA key pair: ledger-auth.key (0600), ledger-auth.jwks.json,
    /// ledger-auth.pub.pem.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    if let Some(TokenCommand::Keygen { out }) = args.command {
        let files = meridian_auth::keys::write_key_pair(&out)?;
        eprintln!(
            "private key (keep it, mode 0600): {}",
            files.private_key.display()
        );
        eprintln!("JWKS:                             {}", files.jwks.display());
        eprintln!(
            "public key PEM:                   {}",
            files.public_pem.display()
        );
        eprintln!("key id:                           {}", files.kid);
        println!(
            "[ledger_auth]\njwks_file = {:?}",
            files.jwks.display().to_string()
        );
        return Ok(());
    }
    let (Some(key), Some(participant), Some(user)) = (args.key, args.participant, args.user) else {
        anyhow::bail!("meridian token needs --key, --participant and --user");
    };
    let mut minter = TokenMinter::from_file(&key)?;
    if let Some(kid) = args.kid {
        minter = minter.with_key_id(kid);
    }
    let grant = TokenGrant {
        participant,
        user,
        act_as: args.act_as,
        read_as: args.read_as,
        admin: args.admin,
        lifetime_s: parse_lifetime_s(&args.lifetime)?,
    };
    let token = minter
        .mint(&grant, meridian_auth::now_s())
        .context("minting the token")?;
    println!("{token}");
    Ok(())
}
