-- SIP telephony (issue 11): a recorded call's recording, kept by the gateway (rtpengine writes one pcap per
-- call, named by call id).
--   recording_path    where the file is (on the gateway's recordings volume)
--   recording_ms      its length
--   recording_sha256  SHA-256 of the file as kept (proof it was not altered since)
ALTER TABLE call_records ADD COLUMN IF NOT EXISTS recording_path text;
ALTER TABLE call_records ADD COLUMN IF NOT EXISTS recording_ms bigint;
ALTER TABLE call_records ADD COLUMN IF NOT EXISTS recording_sha256 text;
ALTER TABLE call_records DROP CONSTRAINT IF EXISTS call_records_recording_whole;
ALTER TABLE call_records ADD CONSTRAINT call_records_recording_whole CHECK (
    (recording_path IS NULL) = (recording_sha256 IS NULL)
    AND (recording_sha256 IS NULL OR recording_sha256 ~ '^[0-9a-f]{64}$')
);

-- The dialer writes the same facts with the call's end (PostgreSQL first): a call record rebuilt from
-- dial_attempts after Redis lost the event keeps its recording.
ALTER TABLE dial_attempts ADD COLUMN IF NOT EXISTS recording_path text;
ALTER TABLE dial_attempts ADD COLUMN IF NOT EXISTS recording_ms bigint;
ALTER TABLE dial_attempts ADD COLUMN IF NOT EXISTS recording_sha256 text;
