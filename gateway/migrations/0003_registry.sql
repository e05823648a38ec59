-- The reader registry (gateway/registry.py), on top of the readers and reader_keys tables of 0001.
--
-- Each key generation also carries the reader's MQTT password, sealed under the master key like the
-- HMAC key (gateway/keystore.py). Only the active generation keeps it: when a key is retired or
-- revoked the password is cleared, since the broker no longer accepts it.
ALTER TABLE reader_keys ADD COLUMN sealed_mqtt_password BLOB;

-- A reader signs with one key at a time.
CREATE UNIQUE INDEX reader_keys_one_active ON reader_keys (reader_id) WHERE state = 'active';
