//! Templates (Rust implementations standing in for Daml templates), command interpretation,
//! and the authorization check.
//!
//! Interpretation is deterministic: given the same commands, acting parties, input contracts
//! and 32-byte seed, every participant builds the same transaction with the same contract ids.
//! That is what lets informee participants check *model conformance* by re-interpreting a
//! request instead of trusting the submitter.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ContractId, IdError, PartyId, TemplateId};
use crate::ledger::{Action, Command, Contract, Transaction};
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown template {0}")]
    UnknownTemplate(String),
    /// `field` is the path inside the payload JSON (`amount`, `owner`), empty when the whole
    /// payload is wrong (not an object, a field missing).
    #[error("invalid {template} payload: {}", at(field, reason))]
    BadPayload {
        template: String,
        field: String,
        reason: String,
    },
    #[error("template {template} has no choice {choice}")]
    UnknownChoice { template: String, choice: String },
    /// `field` as for `BadPayload`, inside the choice argument.
    #[error("invalid argument to {choice}: {}", at(field, reason))]
    BadArgument {
        choice: String,
        field: String,
        reason: String,
    },
    #[error("contract {0} is unknown or not active")]
    UnknownContract(ContractId),
    #[error("{action} needs the authority of {missing:?}, which the submission does not have")]
    MissingAuthorization {
        action: String,
        missing: BTreeSet<PartyId>,
    },
    #[error("a command needs at least one acting party")]
    NoActingParty,
    #[error("a submission needs at least one command")]
    NoCommands,
    /// A failure of one command of a submission, `index` counting from 0 in request order. Its
    /// message names the command the way the Ledger API documents it (`commands[1]`), down to
    /// the field when the command's own payload or argument is wrong
    /// (`commands[1].create.payload_json.amount`).
    #[error("{}", in_command(*index, *kind, source))]
    InCommand {
        index: usize,
        kind: CommandKind,
        source: Box<ModelError>,
    },
}

impl ModelError {
    /// The failure itself, without the command it happened in.
    pub fn root(&self) -> &ModelError {
        match self {
            ModelError::InCommand { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Which kind of command failed, to name the field of the request that was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Create,
    Exercise,
}

fn at(field: &str, reason: &str) -> String {
    if field.is_empty() {
        reason.to_owned()
    } else {
        format!("{field}: {reason}")
    }
}

fn in_command(index: usize, kind: CommandKind, source: &ModelError) -> String {
    let path = |wire_field: &str, field: &str| {
        let mut path = format!("commands[{index}].{wire_field}");
        if !field.is_empty() {
            path.push('.');
            path.push_str(field);
        }
        path
    };
    match (kind, source) {
        // The client's own payload or argument: name its field. (A BadPayload inside an
        // exercise concerns a stored contract, not the request, so it keeps the plain form.)
        (
            CommandKind::Create,
            ModelError::BadPayload {
                template,
                field,
                reason,
            },
        ) => format!(
            "{}: {reason} (template {template})",
            path("create.payload_json", field)
        ),
        (
            CommandKind::Exercise,
            ModelError::BadArgument {
                choice,
                field,
                reason,
            },
        ) => format!(
            "{}: {reason} (choice {choice})",
            path("exercise.argument_json", field)
        ),
        _ => format!("commands[{index}]: {source}"),
    }
}

/// What exercising a choice does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceOutcome {
    pub consuming: bool,
    /// Who must act to exercise it.
    pub controllers: BTreeSet<PartyId>,
    /// Other contracts archived as part of the choice (e.g. `Merge`'s other IOU).
    pub archives: Vec<Contract>,
    /// Contracts created, in order.
    pub creates: Vec<(TemplateId, Value)>,
}

/// A contract template: who signs and observes a payload, and what its choices do.
pub trait Template: Send + Sync {
    fn id(&self) -> TemplateId;

    /// Validates a payload and returns (signatories, observers).
    fn parties(
        &self,
        payload: &Value,
    ) -> Result<(BTreeSet<PartyId>, BTreeSet<PartyId>), ModelError>;

    /// Evaluates `choice` on `contract`. `lookup` finds other active contracts by id.
    fn exercise(
        &self,
        contract: &Contract,
        choice: &str,
        argument: &Value,
        lookup: &dyn Fn(&ContractId) -> Option<Contract>,
    ) -> Result<ChoiceOutcome, ModelError>;
}

/// The templates a participant knows.
pub struct TemplateRegistry {
    templates: BTreeMap<String, Box<dyn Template>>,
}

impl std::fmt::Debug for TemplateRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.templates.keys()).finish()
    }
}

impl TemplateRegistry {
    /// The built-in templates (today: [`Iou`]).
    pub fn standard() -> Self {
        let mut templates: BTreeMap<String, Box<dyn Template>> = BTreeMap::new();
        templates.insert(Iou.id().to_string(), Box::new(Iou));
        Self { templates }
    }

    pub fn get(&self, id: &TemplateId) -> Result<&dyn Template, ModelError> {
        self.templates
            .get(id.as_str())
            .map(|t| t.as_ref())
            .ok_or_else(|| ModelError::UnknownTemplate(id.to_string()))
    }

    /// Builds the transaction `commands` produce when submitted by `act_as`.
    ///
    /// `lookup` must return only contracts active for the interpreting participant (or, on
    /// validation, the contracts disclosed in the request). The transaction is authorized by
    /// construction only if [`authorize`] passes; interpretation itself checks controllers.
    pub fn interpret(
        &self,
        commands: &[Command],
        act_as: &BTreeSet<PartyId>,
        seed: &[u8; 32],
        lookup: &dyn Fn(&ContractId) -> Option<Contract>,
    ) -> Result<Transaction, ModelError> {
        if act_as.is_empty() {
            return Err(ModelError::NoActingParty);
        }
        if commands.is_empty() {
            return Err(ModelError::NoCommands);
        }
        let mut ids = ContractIdSource { seed, next: 0 };
        // Contracts archived earlier in this transaction must not be used again.
        let mut archived: BTreeSet<ContractId> = BTreeSet::new();
        let mut created: BTreeMap<ContractId, Contract> = BTreeMap::new();
        let mut roots = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            let in_command = |kind: CommandKind| {
                move |source: ModelError| ModelError::InCommand {
                    index,
                    kind,
                    source: Box::new(source),
                }
            };
            let action = match command {
                Command::Create { template, payload } => {
                    let contract = self
                        .new_contract(&mut ids, template.clone(), payload.clone())
                        .map_err(in_command(CommandKind::Create))?;
                    created.insert(contract.id.clone(), contract.clone());
                    Action::Create { contract }
                }
                Command::Exercise {
                    contract_id,
                    choice,
                    argument,
                } => {
                    let find = |id: &ContractId| -> Option<Contract> {
                        if archived.contains(id) {
                            return None;
                        }
                        created.get(id).cloned().or_else(|| lookup(id))
                    };
                    let failed = in_command(CommandKind::Exercise);
                    let contract = find(contract_id)
                        .ok_or_else(|| failed(ModelError::UnknownContract(contract_id.clone())))?;
                    let template = self.get(&contract.template).map_err(failed)?;
                    let outcome = template
                        .exercise(&contract, choice, argument, &find)
                        .map_err(failed)?;
                    if !outcome.controllers.is_subset(act_as) {
                        return Err(failed(ModelError::MissingAuthorization {
                            action: format!("{} on {}", choice, contract.id),
                            missing: outcome.controllers.difference(act_as).cloned().collect(),
                        }));
                    }
                    let mut children = Vec::new();
                    for other in &outcome.archives {
                        children.push(Action::Exercise {
                            contract_id: other.id.clone(),
                            template: other.template.clone(),
                            choice: "Archive".into(),
                            argument: Value::Null,
                            actors: outcome.controllers.clone(),
                            consuming: true,
                            signatories: other.signatories.clone(),
                            stakeholders: other.stakeholders(),
                            children: Vec::new(),
                        });
                    }
                    for (template, payload) in outcome.creates {
                        let contract = self
                            .new_contract(&mut ids, template, payload)
                            .map_err(failed)?;
                        created.insert(contract.id.clone(), contract.clone());
                        children.push(Action::Create { contract });
                    }
                    if outcome.consuming {
                        archived.insert(contract.id.clone());
                    }
                    for other in &outcome.archives {
                        archived.insert(other.id.clone());
                    }
                    Action::Exercise {
                        contract_id: contract.id.clone(),
                        template: contract.template.clone(),
                        choice: choice.clone(),
                        argument: argument.clone(),
                        actors: outcome.controllers,
                        consuming: outcome.consuming,
                        signatories: contract.signatories.clone(),
                        stakeholders: contract.stakeholders(),
                        children,
                    }
                }
            };
            roots.push(action);
        }
        Ok(Transaction { roots })
    }

    fn new_contract(
        &self,
        ids: &mut ContractIdSource<'_>,
        template: TemplateId,
        payload: Value,
    ) -> Result<Contract, ModelError> {
        let (signatories, observers) = self.get(&template)?.parties(&payload)?;
        Ok(Contract {
            id: ids.next(),
            template,
            payload,
            signatories,
            observers,
        })
    }
}

/// The seed of a submission's transaction: the submitter's clock (microseconds, big-endian) in
/// the first 8 bytes, `random` after them. Contract ids begin with those 8 bytes
/// ([`ContractIdSource`]), so contracts are created in about the order of their ids.
pub fn transaction_seed(now: Timestamp, random: [u8; 24]) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&now.as_micros().to_be_bytes());
    seed[8..].copy_from_slice(&random);
    seed
}

/// Contract ids are the seed's first 8 bytes, then 24 bytes of `blake3(seed || counter)`, in
/// hex: unique per transaction seed, identical on every participant that re-interprets the
/// same request.
///
/// Why the prefix: every store keeps its contracts in a B-tree keyed by id, and a random id
/// lands each new contract on a page of its own, which SQLite then writes whole to its WAL
/// (a third of a participant's WAL frames were that index's pages). With the submitter's
/// clock first ([`transaction_seed`]), a batch's contracts land on the index's last pages.
/// The prefix only orders; 192 bits of digest keep the ids apart whatever a seed holds.
struct ContractIdSource<'a> {
    seed: &'a [u8; 32],
    next: u32,
}

impl ContractIdSource<'_> {
    fn next(&mut self) -> ContractId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"meridian/v1/contract-id");
        hasher.update(self.seed);
        hasher.update(&self.next.to_be_bytes());
        self.next += 1;
        let digest = hasher.finalize().to_hex();
        ContractId::new(format!("{}{}", hex::encode(&self.seed[..8]), &digest[..48]))
            .expect("hex digits are a valid contract id")
    }
}

/// Checks that every action is authorized: roots by the acting parties, children of an
/// exercise by the exercised contract's signatories plus its actors.
pub fn authorize(transaction: &Transaction, act_as: &BTreeSet<PartyId>) -> Result<(), ModelError> {
    fn check(action: &Action, authorizers: &BTreeSet<PartyId>) -> Result<(), ModelError> {
        let (required, label) = match action {
            Action::Create { contract } => (
                contract.signatories.clone(),
                format!("create of {}", contract.id),
            ),
            Action::Exercise {
                actors,
                choice,
                contract_id,
                ..
            } => (actors.clone(), format!("{choice} on {contract_id}")),
            Action::Fetch {
                actors,
                contract_id,
                ..
            } => (actors.clone(), format!("fetch of {contract_id}")),
        };
        let missing: BTreeSet<PartyId> = required.difference(authorizers).cloned().collect();
        if !missing.is_empty() {
            return Err(ModelError::MissingAuthorization {
                action: label,
                missing,
            });
        }
        if let Action::Exercise {
            actors,
            signatories,
            children,
            ..
        } = action
        {
            let inner: BTreeSet<PartyId> = signatories.union(actors).cloned().collect();
            for child in children {
                check(child, &inner)?;
            }
        }
        Ok(())
    }
    for root in &transaction.roots {
        check(root, act_as)?;
    }
    Ok(())
}

/// The demo asset: an I-owe-you. The issuer signs; the owner observes and controls.
/// Amounts are integers in minor units so that conservation checks are exact.
#[derive(Debug, Clone, Copy, Default)]
pub struct Iou;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IouPayload {
    pub issuer: PartyId,
    pub owner: PartyId,
    pub amount: u64,
    pub currency: String,
}

impl IouPayload {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an IouPayload always serializes")
    }
}

/// Deserializes `value`; an error names the path of the field that was wrong (`amount`), or
/// an empty path when the whole value was (a missing field, not an object).
fn parse<T: for<'de> Deserialize<'de>>(
    value: &Value,
    bad: impl Fn(String, String) -> ModelError,
) -> Result<T, ModelError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        // serde_path_to_error writes "." for the root.
        let path = if path == "." { String::new() } else { path };
        bad(path, error.into_inner().to_string())
    })
}

fn party_arg(choice: &str, value: &Value, field: &str) -> Result<PartyId, ModelError> {
    let bad = |reason: String| ModelError::BadArgument {
        choice: choice.into(),
        field: field.into(),
        reason,
    };
    let text = value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing, or not a string".into()))?;
    PartyId::new(text).map_err(|e: IdError| bad(e.to_string()))
}

impl Iou {
    pub fn payload(contract: &Contract) -> Result<IouPayload, ModelError> {
        Self::check(&contract.payload)
    }

    fn check(payload: &Value) -> Result<IouPayload, ModelError> {
        let bad = |field: &str, reason: String| ModelError::BadPayload {
            template: "Iou".into(),
            field: field.into(),
            reason,
        };
        let iou: IouPayload = parse(payload, |field, reason| bad(&field, reason))?;
        if iou.amount == 0 {
            return Err(bad("amount", "must be positive".into()));
        }
        if iou.currency.is_empty()
            || iou.currency.len() > 16
            || !iou.currency.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(bad(
                "currency",
                format!("{:?} must be 1-16 ASCII letters or digits", iou.currency),
            ));
        }
        Ok(iou)
    }
}

impl Template for Iou {
    fn id(&self) -> TemplateId {
        TemplateId::new("Iou").expect("static template id is valid")
    }

    fn parties(
        &self,
        payload: &Value,
    ) -> Result<(BTreeSet<PartyId>, BTreeSet<PartyId>), ModelError> {
        let iou = Self::check(payload)?;
        let mut observers = BTreeSet::new();
        if iou.owner != iou.issuer {
            observers.insert(iou.owner.clone());
        }
        Ok((BTreeSet::from([iou.issuer]), observers))
    }

    fn exercise(
        &self,
        contract: &Contract,
        choice: &str,
        argument: &Value,
        lookup: &dyn Fn(&ContractId) -> Option<Contract>,
    ) -> Result<ChoiceOutcome, ModelError> {
        let iou = Self::check(&contract.payload)?;
        let controllers = BTreeSet::from([iou.owner.clone()]);
        let bad = |field: &str, reason: String| ModelError::BadArgument {
            choice: choice.into(),
            field: field.into(),
            reason,
        };
        let with = |owner: PartyId, amount: u64| {
            (
                self.id(),
                IouPayload {
                    issuer: iou.issuer.clone(),
                    owner,
                    amount,
                    currency: iou.currency.clone(),
                }
                .to_value(),
            )
        };
        match choice {
            "Transfer" => {
                let new_owner = party_arg(choice, argument, "new_owner")?;
                Ok(ChoiceOutcome {
                    consuming: true,
                    controllers,
                    archives: Vec::new(),
                    creates: vec![with(new_owner, iou.amount)],
                })
            }
            "Split" => {
                let amount = argument
                    .get("amount")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("amount", "missing, or not an unsigned integer".into()))?;
                if amount == 0 || amount >= iou.amount {
                    return Err(bad(
                        "amount",
                        format!("{amount} must be between 1 and {} (exclusive)", iou.amount),
                    ));
                }
                Ok(ChoiceOutcome {
                    consuming: true,
                    controllers,
                    archives: Vec::new(),
                    creates: vec![
                        with(iou.owner.clone(), amount),
                        with(iou.owner.clone(), iou.amount - amount),
                    ],
                })
            }
            "Merge" => {
                let other_id = argument
                    .get("other")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("other", "missing, or not a string".into()))
                    .and_then(|s| ContractId::new(s).map_err(|e| bad("other", e.to_string())))?;
                if other_id == contract.id {
                    return Err(bad("other", "cannot merge an IOU with itself".into()));
                }
                let other = lookup(&other_id).ok_or(ModelError::UnknownContract(other_id))?;
                if other.template != contract.template {
                    return Err(bad("other", "the other contract is not an Iou".into()));
                }
                let theirs = Self::check(&other.payload)?;
                if theirs.issuer != iou.issuer
                    || theirs.owner != iou.owner
                    || theirs.currency != iou.currency
                {
                    return Err(bad(
                        "other",
                        "the other IOU must have the same issuer, owner and currency".into(),
                    ));
                }
                let total = iou
                    .amount
                    .checked_add(theirs.amount)
                    .ok_or_else(|| bad("", "merged amount overflows".into()))?;
                Ok(ChoiceOutcome {
                    consuming: true,
                    controllers,
                    archives: vec![other],
                    creates: vec![with(iou.owner.clone(), total)],
                })
            }
            other => Err(ModelError::UnknownChoice {
                template: "Iou".into(),
                choice: other.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn party(name: &str) -> PartyId {
        PartyId::new(name).unwrap()
    }

    fn iou_id() -> TemplateId {
        TemplateId::new("Iou").unwrap()
    }

    fn actors(names: &[&str]) -> BTreeSet<PartyId> {
        names.iter().map(|name| party(name)).collect()
    }

    /// The bank creating an IOU with the given payload, no existing contracts in sight.
    fn bank_creates(
        registry: &TemplateRegistry,
        template: TemplateId,
        payload: serde_json::Value,
        seed: u8,
    ) -> Result<Transaction, ModelError> {
        registry.interpret(
            &[Command::Create { template, payload }],
            &actors(&["bank"]),
            &[seed; 32],
            &|_| None,
        )
    }

    fn iou_payload(owner: &str, amount: u64) -> serde_json::Value {
        json!({"issuer": "bank", "owner": owner, "amount": amount, "currency": "USD"})
    }

    fn exercise(contract: &Contract, choice: &str, argument: serde_json::Value) -> Command {
        Command::Exercise {
            contract_id: contract.id.clone(),
            choice: choice.into(),
            argument,
        }
    }

    fn issue(registry: &TemplateRegistry, owner: &str, amount: u64, seed: u8) -> Contract {
        let tx = bank_creates(registry, iou_id(), iou_payload(owner, amount), seed).unwrap();
        let contract = tx.created().next().unwrap().clone();
        contract
    }

    #[test]
    fn transfer_is_deterministic_and_authorized() {
        let registry = TemplateRegistry::standard();
        let iou = issue(&registry, "alice", 100, 1);
        let lookup = |id: &ContractId| (id == &iou.id).then(|| iou.clone());
        let commands = [exercise(&iou, "Transfer", json!({"new_owner": "bob"}))];
        let act_as = actors(&["alice"]);
        let a = registry
            .interpret(&commands, &act_as, &[7; 32], &lookup)
            .unwrap();
        let b = registry
            .interpret(&commands, &act_as, &[7; 32], &lookup)
            .unwrap();
        assert_eq!(a, b, "same inputs, same transaction and contract ids");
        authorize(&a, &act_as).unwrap();
        assert_eq!(a.consumed(), vec![iou.id.clone()]);
        assert_eq!(a.inputs(), BTreeSet::from([iou.id.clone()]));
        let created: Vec<_> = a.created().collect();
        assert_eq!(Iou::payload(created[0]).unwrap().owner, party("bob"));
        assert_eq!(
            a.informees(),
            BTreeSet::from([party("alice"), party("bank"), party("bob")])
        );
        assert_eq!(
            a.confirming_parties(),
            BTreeSet::from([party("alice"), party("bank")])
        );
    }

    #[test]
    fn contract_ids_follow_the_submitters_clock_and_stay_apart() {
        let registry = TemplateRegistry::standard();
        let create = |now_us: u64, random: u8| {
            let seed = transaction_seed(Timestamp::from_micros(now_us), [random; 24]);
            let commands = [
                Command::Create {
                    template: iou_id(),
                    payload: iou_payload("alice", 1),
                },
                Command::Create {
                    template: iou_id(),
                    payload: iou_payload("alice", 2),
                },
            ];
            let tx = registry
                .interpret(&commands, &actors(&["bank"]), &seed, &|_| None)
                .unwrap();
            tx.created().map(|c| c.id.clone()).collect::<Vec<_>>()
        };
        let earlier = create(1_700_000_000_000_000, 9);
        let later = create(1_700_000_000_000_001, 1);
        let same_moment = create(1_700_000_000_000_001, 2);
        for id in earlier.iter().chain(&later) {
            assert_eq!(id.as_str().len(), 64, "{id}");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert!(earlier[0]
            .as_str()
            .starts_with(&format!("{:016x}", 1_700_000_000_000_000u64)));
        // Ids sort by the clock whatever the random bytes: a store's index takes them at its end.
        assert!(
            earlier.iter().max() < later.iter().min(),
            "{earlier:?} {later:?}"
        );
        // The same moment and seed prefix still give different ids, per seed and per contract.
        let all: BTreeSet<_> = earlier.iter().chain(&later).chain(&same_moment).collect();
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn only_the_owner_controls_and_bad_arguments_are_named() {
        let registry = TemplateRegistry::standard();
        let iou = issue(&registry, "alice", 100, 1);
        let lookup = |id: &ContractId| (id == &iou.id).then(|| iou.clone());
        let attempt = |command, actor| {
            registry
                .interpret(&[command], &actors(&[actor]), &[0; 32], &lookup)
                .unwrap_err()
        };
        let err = attempt(
            exercise(&iou, "Transfer", json!({"new_owner": "bob"})),
            "bob",
        );
        assert!(
            matches!(err.root(), ModelError::MissingAuthorization { .. }),
            "{err}"
        );
        let err = attempt(exercise(&iou, "Transfer", json!({"owner": "bob"})), "alice");
        assert_eq!(
            err.to_string(),
            "commands[0].exercise.argument_json.new_owner: missing, or not a string \
             (choice Transfer)"
        );
        let err = attempt(exercise(&iou, "Split", json!({"amount": 100})), "alice");
        assert!(
            matches!(err.root(), ModelError::BadArgument { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_contract_cannot_be_consumed_twice_in_one_transaction() {
        let registry = TemplateRegistry::standard();
        let iou = issue(&registry, "alice", 100, 1);
        let lookup = |id: &ContractId| (id == &iou.id).then(|| iou.clone());
        let transfer = exercise(&iou, "Transfer", json!({"new_owner": "bob"}));
        let err = registry
            .interpret(
                &[transfer.clone(), transfer],
                &actors(&["alice"]),
                &[0; 32],
                &lookup,
            )
            .unwrap_err();
        assert_eq!(err.root(), &ModelError::UnknownContract(iou.id.clone()));
    }

    #[test]
    fn split_and_merge_conserve_the_amount() {
        let registry = TemplateRegistry::standard();
        let a = issue(&registry, "alice", 70, 1);
        let b = issue(&registry, "alice", 30, 2);
        let contracts = [a.clone(), b.clone()];
        let lookup = |id: &ContractId| contracts.iter().find(|c| &c.id == id).cloned();
        let act_as = actors(&["alice"]);
        let merge = exercise(&a, "Merge", json!({"other": b.id.to_string()}));
        let merged = registry
            .interpret(&[merge], &act_as, &[3; 32], &lookup)
            .unwrap();
        authorize(&merged, &act_as).unwrap();
        assert_eq!(merged.consumed(), vec![a.id.clone(), b.id.clone()]);
        let total: u64 = merged
            .created()
            .map(|c| Iou::payload(c).unwrap().amount)
            .sum();
        assert_eq!(total, 100);

        let split = registry
            .interpret(
                &[exercise(&a, "Split", json!({"amount": 20}))],
                &act_as,
                &[4; 32],
                &lookup,
            )
            .unwrap();
        let amounts: Vec<u64> = split
            .created()
            .map(|c| Iou::payload(c).unwrap().amount)
            .collect();
        assert_eq!(amounts, vec![20, 50]);
    }

    #[test]
    fn authorization_rejects_a_forged_tree() {
        let registry = TemplateRegistry::standard();
        let tx = bank_creates(&registry, iou_id(), iou_payload("alice", 5), 0).unwrap();
        // Alice cannot create an IOU that the bank signs.
        assert!(authorize(&tx, &actors(&["alice"])).is_err());
        assert!(authorize(&tx, &actors(&["bank"])).is_ok());
    }

    #[test]
    fn payload_validation() {
        let registry = TemplateRegistry::standard();
        let err = bank_creates(&registry, iou_id(), iou_payload("alice", 0), 0).unwrap_err();
        assert!(err.to_string().contains("positive"), "{err}");
        let nope = TemplateId::new("Nope").unwrap();
        let err = bank_creates(&registry, nope, json!({}), 0).unwrap_err();
        assert_eq!(err.root(), &ModelError::UnknownTemplate("Nope".into()));
        assert_eq!(err.to_string(), "commands[0]: unknown template Nope");
    }

    #[test]
    fn errors_name_the_command_and_the_payload_field() {
        let registry = TemplateRegistry::standard();
        let create = |payload: Value| Command::Create {
            template: iou_id(),
            payload,
        };
        let good = create(iou_payload("alice", 5));
        let error_of = |bad: Command| {
            registry
                .interpret(
                    &[good.clone(), bad, good.clone()],
                    &actors(&["bank"]),
                    &[0; 32],
                    &|_: &ContractId| None,
                )
                .unwrap_err()
                .to_string()
        };
        let mut negative = iou_payload("alice", 5);
        negative["amount"] = json!(-5);
        assert_eq!(
            error_of(create(negative)),
            "commands[1].create.payload_json.amount: invalid value: integer `-5`, expected u64 \
             (template Iou)"
        );
        let mut wrong_type = iou_payload("alice", 5);
        wrong_type["owner"] = json!(7);
        assert!(
            error_of(create(wrong_type)).starts_with("commands[1].create.payload_json.owner: "),
            "a wrong type names the field"
        );
        assert_eq!(
            error_of(create(json!({"issuer": "bank"}))),
            "commands[1].create.payload_json: missing field `owner` (template Iou)"
        );
        assert_eq!(
            error_of(Command::Create {
                template: TemplateId::new("Nope").unwrap(),
                payload: json!({}),
            }),
            "commands[1]: unknown template Nope"
        );
    }
}
