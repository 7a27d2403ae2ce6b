-- One plain listing page among several fetched in one round trip (requests that waited for a
-- connection at the same time ride together). The server repeats it for each page, joined by
-- UNION ALL and followed by ORDER BY n, id: @n is the page's place (from 1, written in), @limit
-- and @offset become that page's numbered parameters. Each page is page.sql's without filters;
-- as there, the statement is unnamed, so every page is planned with its own values (an index
-- scan, where LIMIT taken from a column would be planned as a sort of the table).
(SELECT id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color
  , @n::int8 AS n
 FROM photographs
 ORDER BY id
 LIMIT @limit OFFSET @offset)
