-- The OGN stealth bit of an aircraft's latest beacon: its identity (registration, competition
-- number, model) is never shown while it is set, whatever the device database says.
ALTER TABLE aircraft ADD COLUMN stealth boolean NOT NULL DEFAULT false;
