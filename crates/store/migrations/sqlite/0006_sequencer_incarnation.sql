-- The incarnation of each sequencer instance row: bumped by every start_instance, and checked
-- by every write of that instance inside its transaction, so that a process of an earlier
-- incarnation (a zombie that was paused, or a second process configured with the same index)
-- can never write again once a newer incarnation has claimed the row.
ALTER TABLE sequencer_instances ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
