//! The Ledger API (`meridian.v1.LedgerService`, documented in `docs/ledger-api.md`): requests
//! into validated domain values, committed transactions into the events a party may see.
//!
//! Every error is a [`WireError::Invalid`] whose field is the path the documentation names
//! (`act_as[1]`, `commands[0].create.payload_json`, `deduplication_period_s`), so the service
//! answers INVALID_ARGUMENT with its text as is.

use std::collections::BTreeSet;

use meridian_core::ledger::{Action, Command, Contract, Transaction};
use meridian_core::protocol::ChangeId;
use meridian_core::{
    CommandId, ContractId, IdError, LedgerOffset, PartyId, TemplateId, Timestamp, TransactionId,
    UserId,
};

use super::WireError;
use crate::v1;

/// The participant's configured bounds on a SubmitAndWait request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitLimits {
    pub max_commands: usize,
    /// Per payload or choice argument (JSON text).
    pub max_payload_bytes: usize,
    /// The deduplication period of a request that names none.
    pub default_dedup_period_s: u64,
    pub max_dedup_period_s: u64,
}

/// A SubmitAndWait request whose every field is valid: what the participant deduplicates,
/// interprets and submits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSubmission {
    pub change: ChangeId,
    pub commands: Vec<Command>,
    /// Between 1 and the participant's maximum.
    pub dedup_period_s: u64,
}

/// A GetTransactions request: transactions after `begin` that any of `parties` sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionsQuery {
    pub begin: LedgerOffset,
    pub parties: BTreeSet<PartyId>,
}

/// A CompletionStream request: `user_id`'s completions after `begin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionsQuery {
    pub begin: LedgerOffset,
    pub user_id: UserId,
}

fn field_id<T>(
    field: &str,
    value: String,
    parse: impl FnOnce(String) -> Result<T, IdError>,
) -> Result<T, WireError> {
    parse(value).map_err(|error| WireError::invalid(field, error))
}

pub fn party_id(field: &str, value: String) -> Result<PartyId, WireError> {
    field_id(field, value, PartyId::new)
}

pub fn user_id(field: &str, value: String) -> Result<UserId, WireError> {
    field_id(field, value, UserId::new)
}

/// A non-empty set of parties; a malformed one is named by its index (`parties[2]`).
pub fn parties_from_wire(field: &str, raw: Vec<String>) -> Result<BTreeSet<PartyId>, WireError> {
    if raw.is_empty() {
        return Err(WireError::invalid(field, "at least one party is required"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, p)| party_id(&format!("{field}[{i}]"), p))
        .collect()
}

fn json_from_wire(
    field: &str,
    text: &str,
    limit_bytes: usize,
) -> Result<serde_json::Value, WireError> {
    if text.len() > limit_bytes {
        return Err(WireError::invalid(
            field,
            format!("{} bytes exceed the limit of {limit_bytes}", text.len()),
        ));
    }
    serde_json::from_str(text)
        .map_err(|e| WireError::invalid(field, format!("not valid JSON: {e}")))
}

/// The `index`th command of a request; an empty choice argument means `{}`.
pub fn command_from_wire(
    index: usize,
    command: v1::Command,
    max_payload_bytes: usize,
) -> Result<Command, WireError> {
    let field = format!("commands[{index}]");
    match command.command {
        Some(v1::command::Command::Create(create)) => Ok(Command::Create {
            template: field_id(
                &format!("{field}.create.template"),
                create.template,
                TemplateId::new,
            )?,
            payload: json_from_wire(
                &format!("{field}.create.payload_json"),
                &create.payload_json,
                max_payload_bytes,
            )?,
        }),
        Some(v1::command::Command::Exercise(exercise)) => {
            if exercise.choice.is_empty() {
                return Err(WireError::invalid(
                    format!("{field}.exercise.choice"),
                    "must not be empty",
                ));
            }
            let argument = if exercise.argument_json.trim().is_empty() {
                serde_json::Value::Object(Default::default())
            } else {
                json_from_wire(
                    &format!("{field}.exercise.argument_json"),
                    &exercise.argument_json,
                    max_payload_bytes,
                )?
            };
            Ok(Command::Exercise {
                contract_id: field_id(
                    &format!("{field}.exercise.contract_id"),
                    exercise.contract_id,
                    ContractId::new,
                )?,
                choice: exercise.choice,
                argument,
            })
        }
        None => Err(WireError::invalid(
            field,
            "neither create nor exercise is set",
        )),
    }
}

/// Validates a SubmitAndWait request field by field, in the order of its message.
pub fn submit_and_wait_from_wire(
    request: v1::SubmitAndWaitRequest,
    limits: &SubmitLimits,
) -> Result<CommandSubmission, WireError> {
    let user_id = user_id("user_id", request.user_id)?;
    let command_id = field_id("command_id", request.command_id, CommandId::new)?;
    let act_as = parties_from_wire("act_as", request.act_as)?;
    if request.commands.is_empty() {
        return Err(WireError::invalid(
            "commands",
            "at least one command is required",
        ));
    }
    if request.commands.len() > limits.max_commands {
        return Err(WireError::invalid(
            "commands",
            format!(
                "{} commands exceed the limit of {}",
                request.commands.len(),
                limits.max_commands
            ),
        ));
    }
    let commands = request
        .commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| command_from_wire(i, c, limits.max_payload_bytes))
        .collect::<Result<_, _>>()?;
    let dedup_period_s = request
        .deduplication_period_s
        .unwrap_or(limits.default_dedup_period_s);
    if dedup_period_s == 0 || dedup_period_s > limits.max_dedup_period_s {
        return Err(WireError::invalid(
            "deduplication_period_s",
            format!("must be between 1 and {}", limits.max_dedup_period_s),
        ));
    }
    Ok(CommandSubmission {
        change: ChangeId {
            user_id,
            act_as,
            command_id,
        },
        commands,
        dedup_period_s,
    })
}

pub fn transactions_query_from_wire(
    request: v1::GetTransactionsRequest,
) -> Result<TransactionsQuery, WireError> {
    Ok(TransactionsQuery {
        begin: LedgerOffset(request.begin_offset),
        parties: parties_from_wire("parties", request.parties)?,
    })
}

pub fn completions_query_from_wire(
    request: v1::CompletionStreamRequest,
) -> Result<CompletionsQuery, WireError> {
    Ok(CompletionsQuery {
        begin: LedgerOffset(request.begin_offset),
        user_id: user_id("user_id", request.user_id)?,
    })
}

pub fn created_event_to_wire(contract: &Contract) -> v1::CreatedEvent {
    v1::CreatedEvent {
        contract_id: contract.id.to_string(),
        template: contract.template.to_string(),
        payload_json: contract.payload.to_string(),
        signatories: contract
            .signatories
            .iter()
            .map(ToString::to_string)
            .collect(),
        observers: contract.observers.iter().map(ToString::to_string).collect(),
    }
}

/// Whether any of `parties` is among `stakeholders`.
pub fn visible(stakeholders: &BTreeSet<PartyId>, parties: &BTreeSet<PartyId>) -> bool {
    stakeholders.iter().any(|p| parties.contains(p))
}

/// A transaction committed at a participant, with what that participant knows of it.
#[derive(Debug, Clone, Copy)]
pub struct CommittedTransaction<'a> {
    pub offset: LedgerOffset,
    pub transaction_id: &'a TransactionId,
    /// The request's sequencing time.
    pub record_time: Timestamp,
    /// Set when this participant submitted it.
    pub command_id: Option<&'a CommandId>,
    pub informees: &'a BTreeSet<PartyId>,
    pub transaction: &'a Transaction,
}

fn created(contract: &Contract) -> v1::Event {
    v1::Event {
        event: Some(v1::event::Event::Created(created_event_to_wire(contract))),
    }
}

fn archived(contract_id: &ContractId, template: &TemplateId) -> v1::Event {
    v1::Event {
        event: Some(v1::event::Event::Archived(v1::ArchivedEvent {
            contract_id: contract_id.to_string(),
            template: template.to_string(),
        })),
    }
}

impl CommittedTransaction<'_> {
    /// The transaction as `parties` may see it on the stream: creates and archives of
    /// contracts they are stakeholders of. `None` when they see nothing of it.
    pub fn flat_to_wire(&self, parties: &BTreeSet<PartyId>) -> Option<v1::Transaction> {
        let mut events = Vec::new();
        for action in self.transaction.actions() {
            match action {
                Action::Create { contract } if visible(&contract.stakeholders(), parties) => {
                    events.push(created(contract));
                }
                Action::Exercise {
                    contract_id,
                    template,
                    consuming: true,
                    stakeholders,
                    ..
                } if visible(stakeholders, parties) => events.push(archived(contract_id, template)),
                _ => {}
            }
        }
        if events.is_empty() && !self.informees.iter().any(|p| parties.contains(p)) {
            return None;
        }
        Some(self.message_with(events))
    }

    /// The transaction as its submitters see it in the `SubmitAndWait` answer: as in Daml, the
    /// informees of an exercise witness its whole subtree (a transfer's actor sees the IOU it
    /// creates for the new owner), so applications can continue with the new contract ids.
    pub fn submitter_view_to_wire(&self, parties: &BTreeSet<PartyId>) -> Option<v1::Transaction> {
        fn walk(
            action: &Action,
            parties: &BTreeSet<PartyId>,
            inherited: bool,
            out: &mut Vec<v1::Event>,
        ) {
            match action {
                Action::Create { contract } => {
                    if inherited || visible(&contract.stakeholders(), parties) {
                        out.push(created(contract));
                    }
                }
                Action::Exercise {
                    contract_id,
                    template,
                    consuming,
                    stakeholders,
                    actors,
                    children,
                    ..
                } => {
                    let witnessed =
                        inherited || visible(stakeholders, parties) || visible(actors, parties);
                    if witnessed && *consuming {
                        out.push(archived(contract_id, template));
                    }
                    for child in children {
                        walk(child, parties, witnessed, out);
                    }
                }
                Action::Fetch { .. } => {}
            }
        }
        // Shown at all only when the stream would show it to them.
        let mut view = self.flat_to_wire(parties)?;
        view.events.clear();
        for root in &self.transaction.roots {
            walk(root, parties, false, &mut view.events);
        }
        Some(view)
    }

    fn message_with(&self, events: Vec<v1::Event>) -> v1::Transaction {
        v1::Transaction {
            transaction_id: self.transaction_id.to_string(),
            offset: self.offset.0,
            record_time_us: self.record_time.as_micros(),
            command_id: self.command_id.map(ToString::to_string).unwrap_or_default(),
            events,
            tree_json: serde_json::to_string(self.transaction).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SubmitLimits {
        SubmitLimits {
            max_commands: 2,
            max_payload_bytes: 64,
            default_dedup_period_s: 600,
            max_dedup_period_s: 3_600,
        }
    }

    fn create(payload_json: &str) -> v1::Command {
        v1::Command {
            command: Some(v1::command::Command::Create(v1::CreateCommand {
                template: "Iou".into(),
                payload_json: payload_json.into(),
            })),
        }
    }

    fn request(commands: Vec<v1::Command>) -> v1::SubmitAndWaitRequest {
        v1::SubmitAndWaitRequest {
            user_id: "app".into(),
            command_id: "c1".into(),
            act_as: vec!["alice".into()],
            commands,
            deduplication_period_s: None,
        }
    }

    fn error_of(request: v1::SubmitAndWaitRequest) -> String {
        submit_and_wait_from_wire(request, &limits())
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn a_valid_request_gets_the_default_dedup_period() {
        let submission =
            submit_and_wait_from_wire(request(vec![create("{}")]), &limits()).expect("valid");
        assert_eq!(submission.dedup_period_s, 600);
        assert_eq!(submission.change.act_as.len(), 1);
        assert_eq!(submission.commands.len(), 1);
    }

    #[test]
    fn errors_name_the_field_as_documented() {
        let mut bad_party = request(vec![create("{}")]);
        bad_party.act_as.push("a b".into());
        assert!(error_of(bad_party).starts_with("act_as[1]: party id \"a b\" contains ' '"));
        assert_eq!(
            error_of(request(Vec::new())),
            "commands: at least one command is required"
        );
        assert_eq!(
            error_of(request(vec![create("{}"), create("{}"), create("{}")])),
            "commands: 3 commands exceed the limit of 2"
        );
        assert!(error_of(request(vec![create("{")]))
            .starts_with("commands[0].create.payload_json: not valid JSON"));
        assert_eq!(
            error_of(request(vec![create(&format!("\"{}\"", "x".repeat(70)))])),
            "commands[0].create.payload_json: 72 bytes exceed the limit of 64"
        );
        assert_eq!(
            error_of(request(vec![v1::Command { command: None }])),
            "commands[0]: neither create nor exercise is set"
        );
        let mut no_period = request(vec![create("{}")]);
        no_period.deduplication_period_s = Some(0);
        assert_eq!(
            error_of(no_period),
            "deduplication_period_s: must be between 1 and 3600"
        );
    }

    #[test]
    fn an_empty_choice_argument_means_an_empty_object() {
        let exercise = v1::Command {
            command: Some(v1::command::Command::Exercise(v1::ExerciseCommand {
                contract_id: "c-1".into(),
                choice: "Transfer".into(),
                argument_json: " ".into(),
            })),
        };
        let command = command_from_wire(0, exercise, 64).expect("valid");
        assert!(matches!(
            command,
            Command::Exercise { argument, .. } if argument == serde_json::json!({})
        ));
    }
}
