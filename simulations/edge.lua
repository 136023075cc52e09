-- The edge's own request handling, after the JWT check and before the transcoder
-- (simulations/edge_lua.py prepends the ROUTES and MESSAGES tables this code reads).
--
-- 1. A token in the URL leaves the URL. Browsers may send their access token as the
--    `access_token` query parameter (WebSockets cannot carry headers). Once the JWT filter has
--    read it, it moves into the Authorization header and out of the path, so no access log,
--    span or service ever sees it in a URL.
--
-- 2. Strict JSON bodies. Envoy's gRPC-JSON transcoder reads JSON leniently: a string where a
--    list is expected becomes a one-element list, a list of lists is flattened, "yes" or "1" is
--    a bool, and a field it does not know is dropped. The proto3 JSON mapping refuses all of
--    these, and so does this filter: a body whose route it knows must be an object whose every
--    field exists in the request message, each value of the JSON type its field takes. Anything
--    wrong is a 400 naming the field, in the services' error shape; the values themselves
--    (numbers in range, enum names, ...) are left to the transcoder.

local function refuse(path, problem)
  error({ field = path, problem = problem }, 0)
end

local function skip_space(text, at)
  return text:find("[^ \t\r\n]", at) or (#text + 1)
end

local function string_end(text, at)
  -- `at` is on the opening quote; returns the position after the closing one.
  local i = at + 1
  while true do
    local stop = text:find('["\\]', i)
    if stop == nil then refuse("", "a string is not closed") end
    if text:byte(stop) == 34 then return stop + 1 end -- "
    i = stop + 2 -- skip the escaped character (\uXXXX is skipped char by char, harmlessly)
  end
end

local NUMBER = "^-?%d+%.?%d*[eE]?[-+]?%d*"

local function kind_at(text, at)
  local c = text:sub(at, at)
  if c == "{" then return "object" elseif c == "[" then return "array" elseif c == '"' then return "string"
  elseif text:find("^true", at) or text:find("^false", at) then return "bool"
  elseif text:find("^null", at) then return "null"
  elseif text:find(NUMBER, at) then return "number" end
  refuse("", "is not valid JSON")
end

local value -- forward

local function members(text, at, path, on_member)
  -- An object at `at`; calls on_member(key, position of its value) which returns the
  -- position after the value. Returns the position after the object.
  local i = skip_space(text, at + 1)
  if text:sub(i, i) == "}" then return i + 1 end
  while true do
    if text:sub(i, i) ~= '"' then refuse(path, "has a member whose name is not a string") end
    local after = string_end(text, i)
    local key = text:sub(i + 1, after - 2)
    i = skip_space(text, after)
    if text:sub(i, i) ~= ":" then refuse(path, "is not valid JSON (a member without ':')") end
    i = skip_space(text, on_member(key, skip_space(text, i + 1)))
    local c = text:sub(i, i)
    if c == "}" then return i + 1 end
    if c ~= "," then refuse(path, "is not valid JSON (expected ',' or '}')") end
    i = skip_space(text, i + 1)
  end
end

local function elements(text, at, path, on_element)
  local i = skip_space(text, at + 1)
  if text:sub(i, i) == "]" then return i + 1 end
  local index = 0
  while true do
    i = skip_space(text, on_element(index, i))
    local c = text:sub(i, i)
    if c == "]" then return i + 1 end
    if c ~= "," then refuse(path, "is not valid JSON (expected ',' or ']')") end
    i = skip_space(text, i + 1)
    index = index + 1
  end
end

local function any_value(text, at, path, depth)
  if depth > 64 then refuse(path, "nests deeper than 64 levels") end
  local kind = kind_at(text, at)
  if kind == "object" then
    return members(text, at, path, function(key, i) return any_value(text, i, path .. "." .. key, depth + 1) end)
  elseif kind == "array" then
    return elements(text, at, path, function(_, i) return any_value(text, i, path, depth + 1) end)
  elseif kind == "string" then return string_end(text, at)
  elseif kind == "number" then local _, last = text:find(NUMBER, at) return last + 1
  elseif kind == "bool" then return at + (text:find("^true", at) and 4 or 5)
  else return at + 4 end
end

local TAKES = {
  string = { string = true },
  bool = { bool = true },
  number = { number = true, string = true }, -- proto3 JSON: quoted numbers are numbers
  enum = { string = true, number = true },
}

local function scalar(text, at, path, spec, kind)
  if kind == "null" then return at + 4 end
  if not TAKES[spec.k][kind] then
    refuse(path, "must be a JSON " .. (spec.k == "enum" and "string or number" or spec.k) .. ", not a " .. kind)
  end
  return any_value(text, at, path, 0)
end

local function message(text, at, path, type_name, depth)
  local fields = MESSAGES[type_name]
  return members(text, at, path, function(key, i)
    local spec = fields[key]
    local where = path == "" and key or (path .. "." .. key)
    if spec == nil then refuse(where, "is not a field of " .. type_name) end
    return value(text, i, where, spec, depth + 1)
  end)
end

local function single(text, at, path, spec, depth)
  local kind = kind_at(text, at)
  if spec.k == "message" then
    if kind == "null" then return at + 4 end
    if kind ~= "object" then refuse(path, "must be a JSON object, not a " .. kind) end
    return message(text, at, path, spec.t, depth)
  elseif spec.k == "any" then
    return any_value(text, at, path, depth)
  end
  return scalar(text, at, path, spec, kind)
end

value = function(text, at, path, spec, depth)
  if depth > 64 then refuse(path, "nests deeper than 64 levels") end
  local kind = kind_at(text, at)
  if spec.m then
    if kind == "null" then return at + 4 end
    if kind ~= "object" then refuse(path, "is a map: it must be a JSON object, not a " .. kind) end
    return members(text, at, path, function(key, i) return single(text, i, path .. "." .. key, spec.v, depth + 1) end)
  elseif spec.r then
    if kind == "null" then return at + 4 end
    if kind ~= "array" then refuse(path, "is a list: it must be a JSON array, not a " .. kind) end
    return elements(text, at, path, function(index, i)
      local where = path .. "[" .. index .. "]"
      if kind_at(text, i) == "array" then refuse(where, "must not be a list: lists do not nest") end
      return single(text, i, where, spec, depth + 1)
    end)
  end
  return single(text, at, path, spec, depth)
end

local function route_of(method, path)
  for _, route in ipairs(ROUTES) do
    if route.method == method and path:find(route.pattern) then return route end
  end
  return nil
end

local function token_out_of_the_url(headers)
  local path = headers:get(":path") or ""
  local before, query = path:match("^([^?]*)%?(.*)$")
  if query == nil then return end
  local token, kept = nil, {}
  for pair in query:gmatch("[^&]+") do
    local name, value = pair:match("^([^=]*)=?(.*)$")
    if name == TOKEN_PARAMETER then token = value else kept[#kept + 1] = pair end
  end
  if token == nil then return end
  if token ~= "" and headers:get("authorization") == nil then headers:add("authorization", "Bearer " .. token) end
  headers:replace(":path", #kept > 0 and (before .. "?" .. table.concat(kept, "&")) or before)
end

local function check_json(handle, headers)
  local content_type = headers:get("content-type") or ""
  if content_type:find("^application/grpc") then return end
  local route = route_of(headers:get(":method") or "", ((headers:get(":path") or ""):gsub("%?.*", "")))
  if route == nil then return end
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local text = body:getBytes(0, body:length())
  local ok, failure = pcall(function()
    local start = skip_space(text, 1)
    if kind_at(text, start) ~= "object" then refuse("", "the body must be a JSON object") end
    local after = skip_space(text, message(text, start, "", route.body, 0))
    if after <= #text then refuse("", "is not valid JSON (text after the object)") end
  end)
  if ok then return end
  if type(failure) ~= "table" then failure = { field = "", problem = "is not valid JSON" } end
  -- Plain text: the edge's local-reply mapping gives it the {"code", "message"} shape.
  local message_text = failure.field == "" and ("request body: " .. failure.problem)
    or (failure.field .. ": " .. failure.problem)
  handle:respond({ [":status"] = "400", ["content-type"] = "text/plain" }, message_text)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  token_out_of_the_url(headers)
  check_json(handle, headers)
end
