"""The post's claim tests (Claims 0-3) and their pre-registrations, installed as
``mechclaims_icl.claims``: ``pytest --pyargs mechclaims_icl.claims`` runs them from any project
(docs/icl-pack.md, Running the pack from your own project)."""
