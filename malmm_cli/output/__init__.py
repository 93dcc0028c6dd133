"""Output: results written as files and text (writers, the HTML report, watch events). Used by jobs
and commands; imports only the reading layer's plain result records and the media layer."""
