-- Upload bodies are JSON that the terminal already sent compactly; compressing ~1 MB per batch
-- in the booking transaction costs more CPU than the disk it saves. Keep them out of line,
-- uncompressed.
alter table upload_batches alter column body set storage external;
