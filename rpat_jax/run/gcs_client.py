"""The gs:// client that the path layer registers with fsspec: gcsfs, with a longer retry budget.

gcsfs tries a failing request six times (about 30 s of backoff). On a pod, an outage that outlasts that
while a checkpoint is being saved fails the save in some processes only, and Orbax's processes then wait
for each other at different barriers. Ten tries (about 2.7 minutes) ride out such an outage. gcsfs fixes
its count when its class is defined, so this subclass wraps the undecorated request in gcsfs's own retry
loop with the larger count; everything else is gcsfs's. Imported by fsspec on the first gs:// path.
"""

import gcsfs
from gcsfs import retry

RETRIES = 10


class PatientGCSFileSystem(gcsfs.GCSFileSystem):
  """gcsfs's file system (the plain or the experimental one, as `gcsfs` chose) retrying RETRIES times."""

  _request = retry.retry_request(retries=RETRIES)(gcsfs.GCSFileSystem._request.__wrapped__)
