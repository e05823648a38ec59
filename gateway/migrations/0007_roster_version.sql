-- A counter that moves with every change to the card numbers, whoever makes it (the roster
-- import in another process, an operator's card assignment): the attendance rules keep their
-- card -> student lookups across groups and drop them when this changes.
CREATE TABLE roster_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO roster_version (id, version) VALUES (1, 0);

CREATE TRIGGER card_numbers_insert_version AFTER INSERT ON card_numbers BEGIN
    UPDATE roster_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER card_numbers_update_version AFTER UPDATE ON card_numbers BEGIN
    UPDATE roster_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER card_numbers_delete_version AFTER DELETE ON card_numbers BEGIN
    UPDATE roster_version SET version = version + 1 WHERE id = 1;
END;
