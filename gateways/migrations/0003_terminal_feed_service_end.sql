-- The last service day of the fare feed each validator last reported on sync (the end of its
-- calendar): /health and /metrics show the days left on it against the back office's clock.
-- Null: the terminal never reported one (a point of sale, or a validator before it synced).
alter table terminals add column feed_service_end date;
