"""The customers' web application (`pipeline web`): server-rendered pages and a JSON API over the
warehouse projections, one tenant per customer, isolated in the database by row-level security."""
