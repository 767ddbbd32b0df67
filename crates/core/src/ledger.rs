//! The ledger model: contracts, transactions as trees of actions, and commands.
//!
//! Every participant derives the same facts from a transaction — who must be told (informees)
//! and who must agree (confirming parties) — so these are computed here, once, from the tree.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::{ContractId, PartyId, TemplateId};

/// An active or archived contract instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    pub id: ContractId,
    pub template: TemplateId,
    pub payload: serde_json::Value,
    pub signatories: BTreeSet<PartyId>,
    pub observers: BTreeSet<PartyId>,
}

impl Contract {
    pub fn stakeholders(&self) -> BTreeSet<PartyId> {
        self.signatories.union(&self.observers).cloned().collect()
    }
}

/// One node of a transaction tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Create {
        contract: Contract,
    },
    Exercise {
        contract_id: ContractId,
        template: TemplateId,
        choice: String,
        argument: serde_json::Value,
        actors: BTreeSet<PartyId>,
        consuming: bool,
        /// Of the exercised contract.
        signatories: BTreeSet<PartyId>,
        /// Of the exercised contract.
        stakeholders: BTreeSet<PartyId>,
        children: Vec<Action>,
    },
    Fetch {
        contract_id: ContractId,
        template: TemplateId,
        actors: BTreeSet<PartyId>,
        signatories: BTreeSet<PartyId>,
        stakeholders: BTreeSet<PartyId>,
    },
}

impl Action {
    fn visit<'a>(&'a self, out: &mut Vec<&'a Action>) {
        out.push(self);
        if let Action::Exercise { children, .. } = self {
            for child in children {
                child.visit(out);
            }
        }
    }
}

/// A transaction: an ordered forest of actions, committed atomically or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Transaction {
    pub roots: Vec<Action>,
}

impl Transaction {
    /// All actions, depth first in execution order.
    pub fn actions(&self) -> Vec<&Action> {
        let mut out = Vec::new();
        for root in &self.roots {
            root.visit(&mut out);
        }
        out
    }

    /// Contracts this transaction archives.
    pub fn consumed(&self) -> Vec<ContractId> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Exercise {
                    contract_id,
                    consuming: true,
                    ..
                } => Some(contract_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Contracts this transaction uses as inputs (exercised or fetched), created ones excluded.
    pub fn inputs(&self) -> BTreeSet<ContractId> {
        let created: BTreeSet<ContractId> = self.created().map(|c| c.id.clone()).collect();
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Exercise { contract_id, .. } | Action::Fetch { contract_id, .. } => {
                    Some(contract_id.clone())
                }
                Action::Create { .. } => None,
            })
            .filter(|id| !created.contains(id))
            .collect()
    }

    pub fn created(&self) -> impl Iterator<Item = &Contract> {
        self.actions().into_iter().filter_map(|a| match a {
            Action::Create { contract } => Some(contract),
            _ => None,
        })
    }

    /// Parties that must learn about the transaction: stakeholders of every node and actors.
    pub fn informees(&self) -> BTreeSet<PartyId> {
        self.involved_parties(ContractParties::Stakeholders)
    }

    /// Parties whose approval the mediator needs: signatories of every node and actors.
    pub fn confirming_parties(&self) -> BTreeSet<PartyId> {
        self.involved_parties(ContractParties::Signatories)
    }

    /// The actors of every node plus, of each contract a node touches, the `which` parties.
    fn involved_parties(&self, which: ContractParties) -> BTreeSet<PartyId> {
        let mut parties = BTreeSet::new();
        for action in self.actions() {
            match action {
                Action::Create { contract } => {
                    parties.extend(contract.signatories.iter().cloned());
                    if which == ContractParties::Stakeholders {
                        parties.extend(contract.observers.iter().cloned());
                    }
                }
                Action::Exercise {
                    actors,
                    signatories,
                    stakeholders,
                    ..
                }
                | Action::Fetch {
                    actors,
                    signatories,
                    stakeholders,
                    ..
                } => {
                    let of_contract = match which {
                        ContractParties::Stakeholders => stakeholders,
                        ContractParties::Signatories => signatories,
                    };
                    parties.extend(of_contract.iter().cloned());
                    parties.extend(actors.iter().cloned());
                }
            }
        }
        parties
    }
}

/// Which parties of a contract a transaction involves, besides the actors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ContractParties {
    /// Signatories and observers.
    Stakeholders,
    Signatories,
}

/// What an application asks a participant to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    Create {
        template: TemplateId,
        payload: serde_json::Value,
    },
    Exercise {
        contract_id: ContractId,
        choice: String,
        argument: serde_json::Value,
    },
}

/// What a participant may do for a party it hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Submit commands, confirm and observe.
    Submission,
    /// Confirm and observe.
    Confirmation,
    /// Observe only.
    Observation,
}

impl Permission {
    /// The name the wire and the topology JSON use: `submission`, `confirmation`, `observation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Submission => "submission",
            Permission::Confirmation => "confirmation",
            Permission::Observation => "observation",
        }
    }

    pub fn can_submit(self) -> bool {
        matches!(self, Permission::Submission)
    }

    pub fn can_confirm(self) -> bool {
        matches!(self, Permission::Submission | Permission::Confirmation)
    }
}
