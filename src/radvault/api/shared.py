"""What the web pages share with the API: the one app they are both mounted in.

The pages (:mod:`radvault.web`) are routes of the API's FastAPI app, so they take
the clinical service, map errors to statuses, read upload bodies under the same
limits and answer file downloads exactly as the API does. They import those parts
from here, the API's public surface for them, rather than from its private modules.
"""

from radvault.api._deps import InstanceId, JobId, StudyId, UserName, get_service
from radvault.api._errors import UploadBudgetExhausted, status_of
from radvault.api._upload import FormCollector, check_declared_length, parse_form
from radvault.api.reports import file_response

__all__ = ["FormCollector", "InstanceId", "JobId", "StudyId", "UploadBudgetExhausted",
           "UserName", "check_declared_length", "file_response", "get_service", "parse_form",
           "status_of"]
