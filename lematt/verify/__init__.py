"""Post-deploy verification: do the endpoints serve the certificates lematt stored?

``checks`` says which endpoint must serve which stored leaf and checks them concurrently
with bounded retries; ``probe`` reads the leaf one endpoint serves for one server name and
key type (direct TLS, SMTP or IMAP STARTTLS). The deployer runs the checks of a host's
sections after its updates succeeded (a mismatch fails that host's deploy, which stays
owed); ``lematt verify`` runs them alone against what is stored now.
"""
