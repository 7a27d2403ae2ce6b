-- Several plain listing pages in one round trip: requests that waited for a connection at the
-- same time ride together. $1 limits, $2 offsets: one element per page, of one length. Each page
-- is page.sql's without filters; its rows are tagged with the page's place in the arrays (`n`,
-- from 1, the last column).
SELECT p.*, q.n
FROM unnest($1::int8[], $2::int8[]) WITH ORDINALITY AS q(lim, off, n)
CROSS JOIN LATERAL (
  SELECT id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color
  FROM photographs
  ORDER BY id
  LIMIT q.lim OFFSET q.off
) AS p
ORDER BY q.n, p.id
