-- GET the URL given on the command line, as the user whose access token is in $TOKEN (if set).
local token = os.getenv("TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
