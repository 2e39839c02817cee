-- Documents extracted from files (PDF, HTML, Markdown) carry their structure: each chunk knows the pages
-- of the original it lies on and the heading path of the section holding most of it, so that a search
-- result can be cited ("page 7, Runbook > Rollback"). Each version keeps the original's origin (media
-- type, size, SHA-256, page and section spans). NULL for text given as text.
ALTER TABLE chunks ADD COLUMN page_start integer, ADD COLUMN page_end integer, ADD COLUMN section text[];
ALTER TABLE document_versions ADD COLUMN origin jsonb;
